"""ComfyUI's model management as the pack uses it: memory, cancel, progress, folders, seeds.

Every function here detects what the running ComfyUI has; see models/comfy/__init__.py.
"""
import logging
from pathlib import Path

import torch

from .runtime import ensure_comfy

ensure_comfy()
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.utils  # noqa: E402

log = logging.getLogger(__name__)

# Cancel: ComfyUI's interrupt. An `Exception` up to 0.3.x, a `BaseException` from 0.38 on, so
# `except Exception` no longer catches it there: catch INTERRUPT by name.
INTERRUPT = mm.InterruptProcessingException


def interrupted() -> bool:
    """Whether the user pressed Cancel (ComfyUI's interrupt flag)."""
    return mm.processing_interrupted()


def raise_if_interrupted() -> None:
    """ComfyUI's own interrupt (clears the flag, as its samplers do) when Cancel was pressed."""
    mm.throw_exception_if_processing_interrupted()


def free_memory(device, patcher=None) -> int:
    """Free bytes on `device` as ComfyUI accounts them.

    The patcher's own `get_free_memory` (0.38: the global one is wrong under Dynamic VRAM,
    the patcher's adds what the dynamic allocator can give back) where it has one.
    """
    own = getattr(patcher, "get_free_memory", None)
    if callable(own):
        return own(device)
    return mm.get_free_memory(device)


def whole_model_flag() -> str | None:
    """'--gpu-only' or '--highvram' when ComfyUI runs in its HIGH_VRAM state, else None.

    In that state ComfyUI builds every model whole on its GPU (`unet_inital_load_device`) and
    keeps it there when unloading (`unet_offload_device`): before the pack can place any block.
    """
    if mm.vram_state != mm.VRAMState.HIGH_VRAM:
        return None
    return "--gpu-only" if getattr(mm.args, "gpu_only", False) else "--highvram"


def warn_whole_model_flag(mode: str) -> str | None:
    """One warning naming the flag when `whole_model_flag()` defeats `mode`; the flag, or None."""
    flag = whole_model_flag()
    if flag is not None:
        log.warning("ComfyUI-Parallel %s: ComfyUI was started with %s, so it builds every model whole on its "
                    "first GPU and keeps it there when unloading, before %s can place the blocks; a model "
                    "bigger than that GPU runs out of memory. Start ComfyUI without --highvram / --gpu-only.",
                    mode, flag, mode)
    return flag


def inference_reserve() -> int:
    """Bytes ComfyUI keeps free for activations (its minimum inference memory)."""
    return mm.minimum_inference_memory()


def module_size(module: torch.nn.Module) -> int:
    return mm.module_size(module)


def intermediate_device() -> torch.device:
    return mm.intermediate_device()


def cast_to_device(tensor: torch.Tensor, device, dtype, copy: bool = False) -> torch.Tensor:
    return mm.cast_to_device(tensor, device, dtype, copy=copy)


def string_to_seed(text: str) -> int:
    """ComfyUI's per-key rounding seed: `comfy.utils.string_to_seed` (0.3.75+); 0.3.52 has it only
    in `comfy.model_patcher` (a deprecated shim there from 0.38 on, logging on every call)."""
    home = getattr(comfy.utils, "string_to_seed", None)
    return (home or comfy.model_patcher.string_to_seed)(text)


def comfyui_dir() -> Path:
    """The folder of the running ComfyUI (workers import the same one)."""
    return Path(mm.__file__).resolve().parents[1]


def progress_bar(total: int):
    """ComfyUI's progress bar (the UI's and the console's)."""
    return comfy.utils.ProgressBar(total)



def torch_device() -> torch.device:
    """The device ComfyUI computes on (its --cpu / GPU choice)."""
    return mm.get_torch_device()


def unload_all_models() -> None:
    """Ask ComfyUI to unload every model it holds (frees the GPU for a model ComfyUI does not manage)."""
    mm.unload_all_models()


def empty_cache() -> None:
    mm.soft_empty_cache()
