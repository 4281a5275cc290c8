"""The tiny Wan in the other file formats people download: fp8_scaled weights and a LoRA.

- fp8_scaled (Comfy-Org's `*_fp8_scaled.safetensors`): every Linear weight stored as
  float8_e4m3fn divided by a per-layer float32 `scale_weight`, the rest as in the full file,
  and the `scaled_fp8` marker ComfyUI's model detection pops (an fp8 tensor; 2 elements means
  "no fp8 matrix multiply"). ComfyUI then builds every Linear with its scaled fp8 ops
  (comfy/ops.py `scaled_fp8_ops`) and, on a device without fp8 kernels, computes with manual cast.
- A LoRA in ComfyUI's kohya key format (devtools/tiny_svd.py `write_svd_lora`, rank 4 on every
  linear weight), as LoraLoaderModelOnly reads it.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from .demo_models import tiny_wan, tiny_wan_state_dict
from .tiny_svd import write_svd_lora

FP8_MAX = 448.0  # largest float8_e4m3fn value


def meta_wan() -> torch.nn.Module:
    """The tiny Wan on the meta device (shapes and module types only)."""
    with torch.device("meta"):
        return tiny_wan()


def fp8_scaled(state_dict: dict, linear_layers: set[str]) -> dict:
    """`state_dict` with each Linear weight as float8_e4m3fn / scale_weight, plus the scaled_fp8 marker."""
    out = {}
    for key, tensor in state_dict.items():
        layer = key.rsplit(".", 1)[0]
        if layer in linear_layers and key.endswith(".weight"):
            scale = (tensor.abs().max().float() / FP8_MAX).reshape(())
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[f"{layer}.scale_weight"] = scale
        else:
            out[key] = tensor
    out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return out


def write_tiny_wan_fp8_scaled(path: Path) -> None:
    """The tiny Wan T2V (tiny_wan_t2v's weights) in Comfy-Org's fp8_scaled format."""
    linear = {name for name, module in meta_wan().named_modules() if isinstance(module, torch.nn.Linear)}
    save_file(fp8_scaled(tiny_wan_state_dict(), linear), str(path))


def write_tiny_wan_lora(path: Path) -> None:
    """A rank-4 LoRA for the tiny Wan T2V."""
    write_svd_lora(path, meta_wan().state_dict(), seed=21)
