"""ModelPatcher couplings: the pack's patcher mixins, load lists, clones, Dynamic VRAM, pinning.

The Multi-GPU and Offload nodes take over where ComfyUI moves weights (`load`, `_load_list`,
`unpatch_model`, `model_size`) through a mixin placed over the MODEL's own patcher class (plain,
GGUF's, ...). Everything here detects what the running ComfyUI has (attributes, signatures,
entry shapes); see the coupling table in models/comfy/__init__.py.
"""
import inspect
import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ...utils.errors import InputError

log = logging.getLogger(__name__)
_CLASSES: dict[tuple[type, type], type] = {}
_LOAD_PARAMETERS = ("device_to", "lowvram_model_memory", "force_patch_weights", "full_load")


def with_mixin(base: type, mixin: type) -> type:
    """`base` with `mixin` on top (one class per pair, reused so clones compare equal)."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{mixin.CLASS_PREFIX}{base.__name__}", (mixin, base), {})
    return _CLASSES[key]


class PatcherMixin:
    """Base of the pack's patcher mixins: overrides that take and pass on any argument.

    A subclass names itself in BLOCK_MANAGER, prefixes combined class names with CLASS_PREFIX
    and lists in CARRIED the attributes every clone keeps. ComfyUI 0.38's
    `clone(disable_dynamic=True)` builds a plain ModelPatcher, dropping the subclass: the mixin
    is put back on the clone here.
    """

    BLOCK_MANAGER = ""
    CLASS_PREFIX = ""
    CARRIED: tuple[str, ...] = ()

    @classmethod
    def pack_mixin(cls) -> type:
        return next(c for c in cls.__mro__ if PatcherMixin in c.__bases__)

    def clone(self, *args, **kwargs):
        clone = super().clone(*args, **kwargs)
        mixin = self.pack_mixin()
        if not isinstance(clone, mixin):
            clone.__class__ = with_mixin(type(clone), mixin)
        for name in self.CARRIED:
            setattr(clone, name, getattr(self, name))
        return clone


def refuse_other_block_manager(patcher, mixin: type) -> None:
    """An InputError on `model` when `patcher` already carries another block-managing mixin."""
    other = getattr(patcher, "BLOCK_MANAGER", None)
    if other and other != mixin.BLOCK_MANAGER:
        raise InputError("model", f"comes from the {other} nodes, which already decide where the transformer "
                                  f"blocks live; the {mixin.BLOCK_MANAGER} nodes cannot manage them too",
                         "a MODEL from a plain loader (UNETLoader, a LoRA loader, ...), or only one of the two")


def as_pack_patcher(patcher, mixin: type):
    """A clone of `patcher` whose class carries `mixin` (the input is left untouched)."""
    refuse_other_block_manager(patcher, mixin)
    clone = patcher.clone()
    clone.__class__ = with_mixin(type(clone), mixin)
    clone.patches_uuid = uuid.uuid4()  # weights loaded under other settings are reloaded, not reused
    return clone


@dataclass
class LoadCall:
    """The arguments of one `ModelPatcher.load` call, newer releases' extras (0.38's `dirty`) kept apart."""

    device_to: object = None
    lowvram_model_memory: int = 0
    force_patch_weights: bool = False
    full_load: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> "LoadCall":
        if len(args) > len(_LOAD_PARAMETERS):
            raise TypeError(f"load() takes at most {len(_LOAD_PARAMETERS)} positional arguments")
        known = dict(zip(_LOAD_PARAMETERS, args))
        known.update({k: v for k, v in kwargs.items() if k in _LOAD_PARAMETERS})
        return cls(**known, extra={k: v for k, v in kwargs.items() if k not in _LOAD_PARAMETERS})

    def arguments(self, **changes) -> dict:
        """Keyword arguments for the base class's `load`, with `changes` applied."""
        values = {name: getattr(self, name) for name in _LOAD_PARAMETERS}
        return {**values, **changes, **self.extra}


def entry_name_and_module(entry: tuple) -> tuple[str, nn.Module]:
    """(module name, module) of one `ModelPatcher._load_list()` entry, whatever its layout.

    0.3.52: (size, name, module, params); 0.3.75 and 0.38's legacy patcher: (offload size, size,
    name, module, params); 0.38's dynamic list: (small first, -offload size, size, name, module, params).
    """
    for index, item in enumerate(entry):
        if isinstance(item, nn.Module) and index > 0 and isinstance(entry[index - 1], str):
            return entry[index - 1], item
    raise TypeError(f"a load-list entry without (name, module): {tuple(type(x).__name__ for x in entry)}")


def drop_from_load_list(entries: list, drop: Callable[[str, nn.Module], bool]) -> list:
    """The load-list entries whose (name, module) `drop` does not claim."""
    return [entry for entry in entries if not drop(*entry_name_and_module(entry))]


def is_dynamic(patcher) -> bool:
    """Whether `patcher` is ComfyUI 0.38's Dynamic VRAM patcher (weights paged in per op)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def non_dynamic(patcher, mode: str, why: str):
    """`patcher` when it is not dynamic, else a non-dynamic patcher of the same model (one console line).

    `get_non_dynamic_delegate` (what ComfyUI's CFGGuider uses) reuses one reloaded model for
    repeated calls; `clone(disable_dynamic=True)` is the other documented way.
    """
    if not is_dynamic(patcher):
        return patcher
    delegate = getattr(patcher, "get_non_dynamic_delegate", None)
    converted = delegate() if callable(delegate) else patcher.clone(disable_dynamic=True)
    log.info("ComfyUI-Parallel %s: this MODEL uses ComfyUI's Dynamic VRAM; %s takes a non-dynamic patcher for it "
             "(%s)", mode, mode, why)
    return converted


def weights_identity(model) -> tuple:
    """What the weights of a ComfyUI model are: which model, and which weight patches are in them.

    model: a ModelPatcher (the weights it computes with: its patches_uuid, None without patches), a
    BaseModel (the weights it holds now: the patches_uuid of the patcher ComfyUI's load last patched
    it with, None while unpatched) or another module whose weights never change once loaded (the
    pack's SeedVR: the module alone). Replicas, workers and shared copies compare this, never tensor
    addresses: the allocator reuses a freed address for the next tensor of the same size, such as a
    LoRA re-patched at another strength. The model is named by a token kept on it (a freed model's
    id() is reused too).
    """
    if hasattr(model, "patches_uuid"):
        return (_model_token(model.model), model.patches_uuid if model.patches else None)
    return (_model_token(model), getattr(model, "current_weight_patches_uuid", None))


def _model_token(base: nn.Module) -> str:
    token = base.__dict__.get("_comfyui_parallel_token")
    if token is None:
        token = base.__dict__["_comfyui_parallel_token"] = uuid.uuid4().hex
    return token


def set_load_device(patcher, device) -> None:
    """Retarget a patcher; the dynamic patcher also needs `register_load_device` (0.38)."""
    patcher.load_device = device
    register = getattr(patcher, "register_load_device", None)
    if callable(register):
        register(device)


def can_pin(patcher) -> bool:
    """Whether this ComfyUI page-locks weights in place (`pin_weight_to_device`: 0.3.75+, never dynamic)."""
    return callable(getattr(patcher, "pin_weight_to_device", None)) and not is_dynamic(patcher)


def pin_weight(patcher, key: str) -> bool:
    """Page-lock one weight in place where ComfyUI can; True when it is pinned now."""
    if not can_pin(patcher):
        return False
    patcher.pin_weight_to_device(key)
    return key in getattr(patcher, "pinned", ())


def unpin_weight(patcher, key: str) -> None:
    """Undo `pin_weight` (no-op where ComfyUI does not pin)."""
    if can_pin(patcher) and callable(getattr(patcher, "unpin_weight", None)):
        patcher.unpin_weight(key)


def patch_weight(patcher, key: str, device=None) -> None:
    """Write the patched (LoRA) weight of `key` into the model, on `device` (None: where it is)."""
    patcher.patch_weight_to_device(key, device_to=device)


def weights_patched(module: nn.Module) -> bool:
    """ComfyUI's own mark that a module's weights are already patched and loaded."""
    return getattr(module, "comfy_patched_weights", False) is True


def mark_weights_patched(module: nn.Module) -> None:
    module.comfy_patched_weights = True


def clear_weights_patched(module: nn.Module) -> None:
    module.__dict__.pop("comfy_patched_weights", None)


def partly_loaded(patcher) -> bool:
    """Whether ComfyUI's lowvram path loaded the model only partly (some weights cast per op, patched then)."""
    return getattr(patcher.model, "model_lowvram", False) is True


def add_loaded_bytes(patcher, count: int) -> None:
    """Book `count` more bytes as loaded on the patcher's device (ComfyUI's accounting)."""
    patcher.model.model_loaded_weight_memory += count


def set_model_device(patcher, device) -> None:
    patcher.model.device = device


def accepts(function, name: str) -> bool:
    """Whether `function` takes a parameter `name` (or **kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
