"""A tiny SVD-architecture model from ComfyUI's own classes, for tests and benchmarks.

ComfyUI's SVD detection pins the full size (model_channels 320, context 1024), so tests build
`comfy.supported_models.SVD_img2vid` (-> `comfy.model_base.SVD_img2vid` with the VideoUNet)
directly with a small config: 64 channels (SVD's fixed 64-channel heads: one head), one
level, temporal res blocks and temporal attention as in the real model. About 3M parameters;
a step on 3 frames of 8×8 latents takes tens of milliseconds on one CPU thread.
"""
import torch

from devtools.demo_models import comfy_on_path, random_init_

TINY_SVD_UNET_CONFIG = dict(
    model_channels=64, in_channels=8, out_channels=4, use_linear_in_transformer=True, transformer_depth=[1, 1],
    transformer_depth_output=[1, 1, 1], channel_mult=[1], num_res_blocks=[2], transformer_depth_middle=1,
    context_dim=64, adm_in_channels=768, extra_ff_mix_layer=True, use_spatial_context=True,
    merge_strategy="learned_with_images", merge_factor=0.0, video_kernel_size=[3, 1, 1], use_temporal_resblock=True,
    use_temporal_attention=True, disable_temporal_crossattention=False, num_classes="sequential",
    use_spatial_transformer=True, legacy=False, image_size=32,
)


def tiny_svd_model(seed: int = 0, load_device: torch.device = torch.device("cpu"), **overrides):
    """A ModelPatcher over ComfyUI's SVD_img2vid with the tiny config and seeded random weights (float32),
    loaded by ComfyUI on `load_device`."""
    comfy_on_path()
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SVD_img2vid({**TINY_SVD_UNET_CONFIG, **overrides})
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    random_init_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=torch.device("cpu"))


def tiny_svd_conditioning(frames: int = 3, height: int = 64, width: int = 64, context_dim: int = 64, seed: int = 1):
    """(positive, negative, latent) shaped as SVD_img2vid_Conditioning makes them, random image embedding."""
    generator = torch.Generator().manual_seed(seed)
    embed = torch.randn(1, 1, context_dim, generator=generator)
    concat = torch.randn(1, 4, height // 8, width // 8, generator=generator)
    extra = {"motion_bucket_id": 127, "fps": 6, "augmentation_level": 0.0}
    positive = [[embed, {**extra, "concat_latent_image": concat}]]
    negative = [[torch.zeros_like(embed), {**extra, "concat_latent_image": torch.zeros_like(concat)}]]
    return positive, negative, torch.zeros([frames, 4, height // 8, width // 8])


MIN_SVD_UNET = "min_svd_unet.safetensors"
# The smallest UNet ComfyUI's detection still calls SVD: 320 channels, context 1024, adm 768 and
# four levels of two res blocks are pinned; only the channel multipliers can shrink (to 1).
MIN_SVD_UNET_CONFIG = dict(
    TINY_SVD_UNET_CONFIG, model_channels=320, channel_mult=[1, 1, 1, 1], num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    context_dim=1024,
)


def write_min_svd_unet(path) -> None:
    """About 212M parameters in fp16 (425 MB): loads through ComfyUI's UNETLoader as SVD_img2vid."""
    from safetensors.torch import save_file

    comfy_on_path()
    import comfy.supported_models

    model_config = comfy.supported_models.SVD_img2vid(dict(MIN_SVD_UNET_CONFIG))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({})
    random_init_(model.diffusion_model, seed=5, scale=0.02)
    save_file({k: v.to(torch.float16).contiguous() for k, v in model.diffusion_model.state_dict().items()}, str(path))


def write_image_embeds(folder) -> None:
    """Demo conditioning files: an SVD image embedding ([1, 1, 1024], as CLIP ViT-H gives) and its zero twin."""
    from safetensors.torch import save_file

    embed = torch.randn(1, 1, 1024, generator=torch.Generator().manual_seed(3))
    save_file({"cond": embed}, str(folder / "svd_image_embed.safetensors"))
    save_file({"cond": torch.zeros_like(embed)}, str(folder / "svd_image_embed_zero.safetensors"))



def write_svd_lora(path, unet_state: dict, rank: int = 4, seed: int = 2, scale: float = 0.05) -> None:
    """A LoRA for an SVD UNet (its state dict, or just tensors of its shapes) in ComfyUI's kohya key
    format (lora_unet_<module path with _>): lora_down / lora_up / alpha for every linear and 2D-conv
    weight, seeded random values."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, weight in unet_state.items():
        if not key.endswith(".weight") or weight.ndim not in (2, 4):
            continue
        name = "lora_unet_" + key[:-len(".weight")].replace(".", "_")
        kernel = weight.shape[2:]
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], *kernel, generator=generator) * scale
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *([1] * len(kernel)),
                                                        generator=generator) * scale
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


MIN_SVD_LORA = "min_svd_lora.safetensors"


def write_min_svd_lora(path) -> None:
    """A rank-4 LoRA for the min_svd_unet (shapes from ComfyUI's SVD class on the meta device)."""
    comfy_on_path()
    import comfy.supported_models

    model_config = comfy.supported_models.SVD_img2vid(dict(MIN_SVD_UNET_CONFIG))
    model_config.set_inference_dtype(torch.float16, None)
    with torch.device("meta"):
        model = model_config.get_model({})
    write_svd_lora(path, model.diffusion_model.state_dict(), scale=0.02)
