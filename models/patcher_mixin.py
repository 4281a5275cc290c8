"""Combine a ModelPatcher mixin with whatever patcher class a MODEL already has.

The Multi-GPU and Offload nodes each take over the places where ComfyUI moves weights
(load, unpatch, model_size) through a mixin placed over the MODEL's own class (plain,
GGUF's, ...), so every later clone keeps it. Both manage where the transformer blocks
live, so one MODEL may carry only one of them.
"""
from ..utils.errors import InputError

_CLASSES: dict[tuple[type, type], type] = {}


def with_mixin(base: type, mixin: type, prefix: str) -> type:
    """`base` with `mixin` on top (one class per pair, reused so clones compare equal)."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{prefix}{base.__name__}", (mixin, base), {})
    return _CLASSES[key]


def refuse_other_block_manager(patcher, mixin: type) -> None:
    """An InputError on `model` when `patcher` already carries another block-managing mixin.

    Each such mixin names itself in a BLOCK_MANAGER class attribute.
    """
    other = getattr(patcher, "BLOCK_MANAGER", None)
    if other is not None and other != mixin.BLOCK_MANAGER:
        raise InputError("model", f"comes from the {other} nodes, which already decide where the transformer "
                                  f"blocks live; the {mixin.BLOCK_MANAGER} nodes cannot manage them too",
                         "a MODEL from a plain loader (UNETLoader, a LoRA loader, ...), or only one of the two")
