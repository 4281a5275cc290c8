"""ComfyUI's loaders as the pack calls them: diffusion files, checkpoints, LoRA, weight files.

A missing, unreadable or unrecognised diffusion file is an InputError naming `unet_name`,
never a bare traceback. Under Dynamic VRAM (0.38+) the pack's own loaders ask ComfyUI for a
non-dynamic patcher (`disable_dynamic=True`) when the mode needs one, saying so once.
"""
import logging

import folder_paths
import torch
from safetensors import SafetensorError

from ...utils.errors import InputError
from .patcher import accepts
from .runtime import ensure_comfy

log = logging.getLogger(__name__)
# A diffusion file's weight dtype, as UNETLoader's weight_dtype: default keeps the file's own (an fp8 or
# fp8_scaled file stays fp8; ComfyUI computes it with manual cast where the device has no fp8 kernels).
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def weight_dtype(choice: str, input_name: str = "base_precision") -> torch.dtype | None:
    """The dtype of a WEIGHT_DTYPES choice (None: ComfyUI's choice for the file); InputError otherwise."""
    if choice not in WEIGHT_DTYPES:
        raise InputError(input_name, f"'{choice}' is not an option", ", ".join(WEIGHT_DTYPES))
    return WEIGHT_DTYPES[choice]


def dynamic_vram_on() -> bool:
    """Whether ComfyUI builds Dynamic VRAM patchers (0.38+ main.py sets CoreModelPatcher to it)."""
    ensure_comfy()
    import comfy.model_patcher

    core = getattr(comfy.model_patcher, "CoreModelPatcher", None)
    return core is not None and core is not comfy.model_patcher.ModelPatcher


def load_diffusion_file(unet_name: str, dtype: torch.dtype | None, non_dynamic_for: str | None = None):
    """ComfyUI's ModelPatcher for `unet_name`; dtype None lets ComfyUI choose, as UNETLoader's default.

    non_dynamic_for: the mode that needs a non-dynamic patcher (None: ComfyUI's default patcher).
    """
    import comfy.sd  # here, not at import: pytest imports the pack's __init__ before ComfyUI is configured

    path = folder_paths.get_full_path("diffusion_models", unet_name)
    if path is None:
        known = folder_paths.get_filename_list("diffusion_models")
        raise InputError("unet_name", f"'{unet_name}' not found in the diffusion_models folder",
                         ", ".join(known[:20]) or "no model files there yet")
    options = {}
    if non_dynamic_for and accepts(comfy.sd.load_diffusion_model, "disable_dynamic"):
        options["disable_dynamic"] = True
        if dynamic_vram_on():
            log.info("ComfyUI-Parallel %s: loading %s with disable_dynamic=True (the mode places the weights "
                     "itself; ComfyUI's Dynamic VRAM would page them per op)", non_dynamic_for, unet_name)
    try:
        return comfy.sd.load_diffusion_model(path, model_options={"dtype": dtype}, **options)
    except (SafetensorError, OSError) as error:
        raise InputError("unet_name", f"'{unet_name}' is not a readable model file ({error})") from error
    except RuntimeError as error:
        raise InputError("unet_name", f"'{unet_name}' is not a model ComfyUI recognises ({error})") from error


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read the safe way (safetensors, or torch.load with weights_only)."""
    import comfy.utils

    return comfy.utils.load_torch_file(path, safe_load=True)


def load_checkpoint(path: str, state_dict: dict | None = None):
    """(model, clip, vae) of a full checkpoint, from the file or from weights already in memory."""
    import comfy.sd

    if state_dict is None:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
        return model, clip, vae
    loaded = comfy.sd.load_state_dict_guess_config(dict(state_dict), output_vae=True, output_clip=True)
    if loaded is None:
        raise RuntimeError(f"ComfyUI could not detect the model type of {path}")
    return loaded[:3]


def apply_lora(model, clip, lora_path: str, strength: float):
    """ComfyUI's LoRA / DoRA loader on both the model and the text encoder."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, clip, load_weights_file(lora_path), strength, strength)


def diffusion_state_dict(path: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The diffusion model's weights of a model file as ComfyUI loads them (its key conversion, `dtype`):
    what a worker on another machine computes with, where the server's shared memory is out of reach."""
    ensure_comfy()
    import comfy.sd

    return comfy.sd.load_diffusion_model(path, model_options={"dtype": dtype}).model.diffusion_model.state_dict()
