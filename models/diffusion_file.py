"""Load a file from ComfyUI's diffusion_models folder with ComfyUI's own loader.

Shared by the loader nodes so an unknown, unreadable or unrecognised file is always an
InputError naming `unet_name`, never a bare traceback.
"""
import folder_paths
import torch
from safetensors import SafetensorError

from ..utils.errors import InputError


def load_diffusion_file(unet_name: str, dtype: torch.dtype | None):
    """ComfyUI's ModelPatcher for `unet_name`; dtype None lets ComfyUI choose, as UNETLoader's default."""
    import comfy.sd  # here, not at import: pytest imports the pack's __init__ before ComfyUI is configured

    path = folder_paths.get_full_path("diffusion_models", unet_name)
    if path is None:
        known = folder_paths.get_filename_list("diffusion_models")
        raise InputError("unet_name", f"'{unet_name}' not found in the diffusion_models folder",
                         ", ".join(known[:20]) or "no model files there yet")
    try:
        return comfy.sd.load_diffusion_model(path, model_options={"dtype": dtype})
    except (SafetensorError, OSError) as error:
        raise InputError("unet_name", f"'{unet_name}' is not a readable model file ({error})") from error
    except RuntimeError as error:
        raise InputError("unet_name", f"'{unet_name}' is not a model ComfyUI recognises ({error})") from error
