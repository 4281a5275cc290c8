"""How a worker rebuilds the server's ComfyUI model from plain data and shared weights.

The server describes a patcher's model by ComfyUI's detected model config (its class, unet
config, dtypes and how the file is quantized: Comfy-Org's fp8_scaled files carry a `scaled_fp8`
marker and per-layer `scale_weight` tensors, newer files a per-layer quant config); a worker
builds the same class with the same ComfyUI ops on the meta device and assigns the weights
(no copy: on the CPU it computes straight from the shared-memory tensors).
"""
import importlib
from types import SimpleNamespace

import torch

from .runtime import ensure_comfy

ensure_comfy()
import comfy.model_patcher  # noqa: E402
import comfy.ops  # noqa: E402

from .patcher import accepts  # noqa: E402


def quantization_of(model_config) -> dict:
    """How ComfyUI's detection found the file quantized, as plain data (what pick_operations is given)."""
    return {"scaled_fp8": getattr(model_config, "scaled_fp8", None),
            "fp8_optimizations": bool(model_config.optimizations.get("fp8", False)),
            "layer_quant_config": getattr(model_config, "layer_quant_config", None)}


def model_spec(patcher) -> dict:
    """Plain data to rebuild the patcher's model in a worker: config class, unet config, dtypes, quantization."""
    base = patcher.model
    config_class = type(base.model_config)
    return {"config_class": f"{config_class.__module__}:{config_class.__qualname__}",
            "unet_config": dict(base.model_config.unet_config), "manual_cast_dtype": base.manual_cast_dtype,
            "quantization": quantization_of(base.model_config)}


def operations_for(spec: dict, device: torch.device):
    """ComfyUI's ops for the spec's weights, as BaseModel picks them (scaled fp8 / mixed precision included)."""
    quantization = spec.get("quantization") or {}
    options = {"load_device": device, "fp8_optimizations": quantization.get("fp8_optimizations", False),
               "scaled_fp8": quantization.get("scaled_fp8")}
    if quantization.get("layer_quant_config") and accepts(comfy.ops.pick_operations, "model_config"):
        options["model_config"] = SimpleNamespace(layer_quant_config=quantization["layer_quant_config"])
    return comfy.ops.pick_operations(spec["unet_config"].get("dtype"), spec["manual_cast_dtype"], **options)


def _configure_quantization(model_config, spec: dict) -> None:
    """Give a rebuilt model config the quantization the server's detection found."""
    quantization = spec.get("quantization") or {}
    model_config.scaled_fp8 = quantization.get("scaled_fp8")
    model_config.optimizations["fp8"] = quantization.get("fp8_optimizations", False)
    if quantization.get("layer_quant_config"):
        model_config.layer_quant_config = quantization["layer_quant_config"]


def build_model(spec: dict, state_dict: dict, device: torch.device):
    """ComfyUI's own model class from (spec, weights), in a ModelPatcher on `device`."""
    module_name, _, class_name = spec["config_class"].partition(":")
    model_config = getattr(importlib.import_module(module_name), class_name)(dict(spec["unet_config"]))
    model_config.set_inference_dtype(spec["unet_config"].get("dtype", torch.float32), spec["manual_cast_dtype"])
    _configure_quantization(model_config, spec)
    with torch.device("meta"):
        model = model_config.get_model({})
    model.load_state_dict(state_dict, strict=True, assign=True)
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise ValueError(f"model tensors without weights: {left_on_meta[:5]}")
    model.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
