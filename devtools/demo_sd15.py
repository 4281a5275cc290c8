"""A tiny SD1.x-shaped checkpoint (+ a LoRA and a DoRA for it) that ComfyUI's own loader takes.

`CheckpointLoaderSimple` detects SD1.5 from the UNet's weights: context_dim 768, model_channels
320 and conv (not linear) transformer projections; the number of levels, res blocks and
transformer depths are read from the weights, so one level with one res block and one
transformer (26M parameters) is still "SD15". The text encoder is always built as the full
CLIP-L from ComfyUI's config (123M parameters; missing keys would stay uninitialised, so all
are written, in fp16). The VAE is detected from its keys: `taesd_decoder.*` under
`first_stage_model.` makes ComfyUI build its TAESD (2.4M parameters) instead of the 83M KL VAE.
Weights are random with a fixed seed, scaled by fan-in so images are neither flat nor saturated.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .demo_models import comfy_on_path

TINY_SD15 = "tiny_sd15.safetensors"
TINY_SD15_LORA = "tiny_sd15_lora.safetensors"
TINY_SD15_DORA = "tiny_sd15_dora.safetensors"
UNET_PREFIX = "model.diffusion_model."
# (module, in_features, is_conv): attention projections (linear) and a transformer's 1x1 conv proj_out
LORA_UNET_TARGETS = [("input_blocks.1.1.transformer_blocks.0.attn1.to_q", 320, False),
                     ("input_blocks.1.1.transformer_blocks.0.attn2.to_k", 768, False),
                     ("middle_block.1.transformer_blocks.0.attn1.to_v", 320, False),
                     ("output_blocks.0.1.proj_out", 320, True)]
LORA_CLIP_TARGETS = [("text_model.encoder.layers.0.self_attn.q_proj", "self_attn_q_proj"),
                     ("text_model.encoder.layers.11.mlp.fc1", "mlp_fc1")]


def fan_in_init_(module: torch.nn.Module, seed: int, gain: float = 1.0) -> torch.nn.Module:
    """Deterministic weights: N(0, gain/fan_in) matrices, small biases, norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name and name.endswith("weight") or name.endswith("vae_scale"):
                tensor.copy_(1.0 + 0.05 * noise if tensor.dim() else torch.tensor(1.0))
            elif tensor.dim() >= 2 and "embedding" not in name:
                boost = 3.0 if ".attn2." in name else 1.0  # make the text (cross-attention) matter
                tensor.copy_(noise * boost * (gain / tensor[0].numel()) ** 0.5)
            else:
                tensor.copy_(0.02 * noise if tensor.dim() else torch.tensor(0.0))
    return module


def unet_config() -> dict:
    return dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], dropout=0.0,
                channel_mult=[1], conv_resample=True, dims=2, num_classes=None, use_checkpoint=False,
                num_heads=8, num_head_channels=-1, use_spatial_transformer=True, transformer_depth=[1],
                context_dim=768, use_linear_in_transformer=False, transformer_depth_middle=1,
                transformer_depth_output=[1, 1])


def tiny_sd15_state_dict(seed: int = 0) -> dict:
    """UNet (one level), full CLIP-L, TAESD: the keys of an SD1.5 checkpoint file, fp16."""
    comfy_on_path()
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    unet = fan_in_init_(UNetModel(**unet_config(), dtype=torch.float32, operations=ops), seed)
    config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
    clip = fan_in_init_(comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", ops), seed + 1)
    vae = calibrate_decoder_(fan_in_init_(comfy.taesd.taesd.TAESD(latent_channels=4), seed + 2, gain=2.0), seed)
    parts = [(UNET_PREFIX, unet), ("cond_stage_model.transformer.", clip), ("first_stage_model.", vae)]
    return {prefix + key: value.to(torch.float16).contiguous()
            for prefix, module in parts for key, value in module.state_dict().items()}


def calibrate_decoder_(vae: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Scale TAESD's last conv so decoded pixels (its raw output) sit around 0.5 +- 0.2, not clipped."""
    last = vae.taesd_decoder[-1]
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        raw = vae.taesd_decoder(latent * 5.0)
        last.weight.mul_(0.2 / raw.std().clamp_min(1e-6))
        last.bias.fill_(0.5)
    return vae


def write_tiny_sd15(path: Path) -> None:
    save_file(tiny_sd15_state_dict(), str(path))


def lora_pair(out_features: int, in_features: int, rank: int, generator: torch.Generator) -> tuple:
    up = torch.randn(out_features, rank, generator=generator) * 2.0
    down = torch.randn(rank, in_features, generator=generator) * in_features ** -0.5
    return up, down


def lora_state_dict(dora: bool, rank: int = 4, seed: int = 10) -> dict:
    """kohya-style keys (lora_unet_* / lora_te_*): up, down, alpha, and dora_scale for DoRA."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {f"lora_unet_{target.replace('.', '_')}": (320, in_features, is_conv)
              for target, in_features, is_conv in LORA_UNET_TARGETS}
    for module, suffix in LORA_CLIP_TARGETS:
        layer = module.split(".")[3]
        shapes[f"lora_te_text_model_encoder_layers_{layer}_{suffix}"] = (3072 if "fc1" in suffix else 768, 768, False)
    weights = {}
    for key, (out_features, in_features, is_conv) in shapes.items():
        up, down = lora_pair(out_features, in_features, rank, generator)
        tail = (1, 1) if is_conv else ()
        weights[f"{key}.lora_up.weight"] = up.reshape(out_features, rank, *tail)
        weights[f"{key}.lora_down.weight"] = down.reshape(rank, in_features, *tail)
        weights[f"{key}.alpha"] = torch.tensor(float(rank))
        if dora:
            scale = 1.0 + 0.2 * torch.rand(out_features, 1, generator=generator)
            weights[f"{key}.dora_scale"] = scale.reshape(out_features, 1, *tail)
    return {key: value.to(torch.float16).contiguous() for key, value in weights.items()}


def write_tiny_lora(path: Path) -> None:
    save_file(lora_state_dict(dora=False), str(path))


def write_tiny_dora(path: Path) -> None:
    save_file(lora_state_dict(dora=True, seed=11), str(path))

