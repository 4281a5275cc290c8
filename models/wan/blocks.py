"""Where a ComfyUI diffusion model keeps its transformer blocks.

Offloading, block distribution and the SeedVR engine work on "the block list" of a model.
This module is the one place that knows which attribute that is for each model family.
Families register with `register_block_list`; Wan (2.1 / 2.2, all variants) is built in.
"""
from torch import nn

from ...utils.errors import InputError

_BLOCK_LISTS: dict[type, str] = {}
_BUILTIN_LOADED = []


def register_block_list(model_class: type, attribute: str) -> None:
    """Declare that instances of `model_class` keep their transformer blocks in `attribute`."""
    _BLOCK_LISTS[model_class] = attribute


def _builtin_families() -> None:
    if _BUILTIN_LOADED:
        return
    from ..comfy import wan as comfy_wan

    register_block_list(comfy_wan.WanModel, comfy_wan.BLOCKS)
    _BUILTIN_LOADED.append(comfy_wan.WanModel)


def transformer_blocks(diffusion_model: nn.Module) -> nn.ModuleList:
    """The transformer block list of `diffusion_model` (a ComfyUI BaseModel is unwrapped).

    Raises InputError naming the supported families for any other model.
    """
    _builtin_families()
    model = getattr(diffusion_model, "diffusion_model", diffusion_model)
    for model_class, attribute in _BLOCK_LISTS.items():
        if isinstance(model, model_class):
            blocks = getattr(model, attribute)
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return blocks
    supported = ", ".join(sorted(cls.__name__ for cls in _BLOCK_LISTS))
    raise InputError("model", f"{type(model).__name__} has no known transformer block list", supported)
