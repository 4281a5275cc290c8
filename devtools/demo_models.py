"""Small random-weight models in real formats, for tests and `make demo`.

Each writer builds the model with ComfyUI's own class (or the pack's SeedVR classes) at a
small size, with a fixed seed, and saves a real safetensors file that ComfyUI's native
loaders detect. `ensure_models(models_dir)` writes what is missing and returns the names.
Register a new writer in WRITERS: (ComfyUI model folder, file name) -> function(path).
"""
import importlib
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from .pack import comfy_on_path

REPO = Path(__file__).resolve().parents[1]
TINY_WAN = "tiny_wan_t2v.safetensors"


def random_init_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Deterministic random weights (ComfyUI's ops leave parameters uninitialised)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if tensor.is_floating_point():
                if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                    tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
                else:
                    tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))
    return module


def tiny_wan(dim: int = 128, num_layers: int = 2, **overrides) -> torch.nn.Module:
    """ComfyUI's WanModel at a size ComfyUI detects as Wan 2.1 T2V: dim 128 (one head of 128), text_dim 4096
    (built on the current default device; its parameters are uninitialised)."""
    comfy_on_path()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    config = dict(model_type="t2v", dim=dim, ffn_dim=2 * dim, num_heads=dim // 128, num_layers=num_layers,
                  text_dim=4096, in_dim=16, out_dim=16, freq_dim=256, operations=comfy.ops.disable_weight_init)
    config.update(overrides)
    return WanModel(**config)


def tiny_wan_state_dict(dim: int = 128, num_layers: int = 2, seed: int = 0, **overrides) -> dict:
    """The tiny Wan's state dict with deterministic random weights."""
    model = random_init_(tiny_wan(dim, num_layers, **overrides), seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_tiny_wan(path: Path) -> None:
    save_file(tiny_wan_state_dict(), str(path))


WRITERS: dict[tuple[str, str], Callable[[Path], None]] = {
    ("diffusion_models", TINY_WAN): write_tiny_wan,
}


def ensure_models(models_dir: Path) -> list[Path]:
    """Write every registered model missing from models_dir; return all their paths."""
    paths = []
    for (folder, name), writer in WRITERS.items():
        path = Path(models_dir) / folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            writer(tmp)
            tmp.replace(path)
        paths.append(path)
    return paths


def _lazy_writer(module: str, function: str) -> Callable[[Path], None]:
    """devtools.<module>.<function>, imported on first use (those modules import this one)."""
    def write(path: Path) -> None:
        getattr(importlib.import_module(f".{module}", __package__), function)(path)
    return write


WRITERS.update({
    # tiny SD1.x checkpoint, LoRA and DoRA (demo_sd15.py)
    ("checkpoints", "tiny_sd15.safetensors"): _lazy_writer("demo_sd15", "write_tiny_sd15"),
    ("loras", "tiny_sd15_lora.safetensors"): _lazy_writer("demo_sd15", "write_tiny_lora"),
    ("loras", "tiny_sd15_dora.safetensors"): _lazy_writer("demo_sd15", "write_tiny_dora"),
    # tiny SeedVR DiT and VAE (demo_seedvr.py)
    ("seedvr", "tiny_seedvr2_dit.safetensors"): _lazy_writer("demo_seedvr", "write_tiny_dit"),
    ("seedvr", "tiny_seedvr_vae.safetensors"): _lazy_writer("demo_seedvr", "write_tiny_vae"),
    ("seedvr", "tiny_seedvr2_3b_fp16.safetensors"): _lazy_writer("demo_seedvr", "write_tiny_comfy_org_dit"),
    # the smallest UNet ComfyUI detects as SVD, and a rank-4 LoRA for it (tiny_svd.py)
    ("diffusion_models", "min_svd_unet.safetensors"): _lazy_writer("tiny_svd", "write_min_svd_unet"),
    ("loras", "min_svd_lora.safetensors"): _lazy_writer("tiny_svd", "write_min_svd_lora"),
})


TINY_WAN_I2V = "tiny_wan_i2v.safetensors"
TINY_WAN22_TI2V = "tiny_wan22_ti2v_5b.safetensors"
TINY_WAN22_HIGH = "tiny_wan22_t2v_high_noise.safetensors"
TINY_WAN22_LOW = "tiny_wan22_t2v_low_noise.safetensors"


def _wan_writer(seed: int, **overrides) -> Callable[[Path], None]:
    """A writer of a tiny Wan variant: ComfyUI detects i2v from img_emb (in_dim 36, WAN21 image_to_video),
    Wan 2.2 TI2V 5B from out_dim 48 (WAN22, 48 latent channels, per-frame timesteps); Wan 2.2 14B's
    high-noise / low-noise experts are T2V-shaped, so two seeds of the T2V model stand in for the pair."""
    def write(path: Path) -> None:
        save_file(tiny_wan_state_dict(seed=seed, **overrides), str(path))
    return write


WRITERS.update({
    ("diffusion_models", TINY_WAN_I2V): _wan_writer(1, model_type="i2v", in_dim=36),
    ("diffusion_models", TINY_WAN22_TI2V): _wan_writer(2, in_dim=48, out_dim=48),
    ("diffusion_models", TINY_WAN22_HIGH): _wan_writer(11),
    ("diffusion_models", TINY_WAN22_LOW): _wan_writer(12),
})


TINY_WAN_FP8_SCALED = "tiny_wan_t2v_fp8_scaled.safetensors"
TINY_WAN_LORA = "tiny_wan_t2v_lora.safetensors"

WRITERS.update({
    # the tiny Wan T2V in Comfy-Org's fp8_scaled format, and a LoRA for it (tiny_wan_files.py)
    ("diffusion_models", TINY_WAN_FP8_SCALED): _lazy_writer("tiny_wan_files", "write_tiny_wan_fp8_scaled"),
    ("loras", TINY_WAN_LORA): _lazy_writer("tiny_wan_files", "write_tiny_wan_lora"),
})
