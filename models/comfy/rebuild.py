"""How a worker rebuilds the server's ComfyUI model from plain data and shared weights.

The server describes a patcher's model by ComfyUI's detected model config (its class, unet
config and dtypes); a worker builds the same class on the meta device and assigns the weights
(no copy: on the CPU it computes straight from the shared-memory tensors).
"""
import importlib

import torch

from .runtime import ensure_comfy

ensure_comfy()
import comfy.model_patcher  # noqa: E402


def model_spec(patcher) -> dict:
    """Plain data to rebuild the patcher's model in a worker: config class, unet config, dtypes."""
    base = patcher.model
    config_class = type(base.model_config)
    return {"config_class": f"{config_class.__module__}:{config_class.__qualname__}",
            "unet_config": dict(base.model_config.unet_config), "manual_cast_dtype": base.manual_cast_dtype}


def build_model(spec: dict, state_dict: dict, device: torch.device):
    """ComfyUI's own model class from (spec, weights), in a ModelPatcher on `device`."""
    module_name, _, class_name = spec["config_class"].partition(":")
    model_config = getattr(importlib.import_module(module_name), class_name)(dict(spec["unet_config"]))
    model_config.set_inference_dtype(spec["unet_config"].get("dtype", torch.float32), spec["manual_cast_dtype"])
    with torch.device("meta"):
        model = model_config.get_model({})
    model.load_state_dict(state_dict, strict=True, assign=True)
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise ValueError(f"model tensors without weights: {left_on_meta[:5]}")
    model.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
