"""The patches of a MODEL that the step-pipeline stages can carry, and how they travel.

Stage workers rebuild the model from (config, weights), so whatever a ModelPatcher carries
besides its weights has to be sent as plain data and rebuilt there:

- Weight patches (LoRA, LoRA-style model merges): the caller computes the patched weights the
  way ComfyUI's loading does (models/comfy/weights.py) and the workers receive those weights.
- The CFG function of VideoLinearCFGGuidance / VideoTriangleCFGGuidance: described as plain
  data and re-applied by that node in the worker (models/comfy/guidance.py).

Anything else (object patches, other model_options functions, transformer patches, wrappers,
hooks) is refused with an error naming what is supported.
"""
from ...utils.errors import InputError
from ..comfy.guidance import GUIDANCE_NODES, cfg_guidance

SUPPORTED = ("weight patches (LoRA, e.g. LoraLoaderModelOnly) and the CFG patches of "
             + " / ".join(GUIDANCE_NODES))
_PATCHER_PARTS = ("object_patches", "weight_wrapper_patches", "hook_patches", "wrappers", "callbacks", "injections")


def _filled(value) -> bool:
    """True when a (possibly nested) dict / list of patches holds anything."""
    if isinstance(value, dict):
        return any(_filled(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return len(value) > 0
    return bool(value)


def describe_patches(model, input_name: str = "model") -> dict | None:
    """The model's non-weight patches as plain data for the workers (None: there are none).

    Raises InputError (for the node input `input_name`) naming each patch the workers could not rebuild.
    """
    guidance, unsupported = None, []
    for name, value in model.model_options.items():
        if name == "sampler_cfg_function":
            guidance = cfg_guidance(value)
            if guidance is None:
                unsupported.append(f"sampler_cfg_function {getattr(value, '__qualname__', type(value).__name__)}")
        elif name == "transformer_options":
            unsupported += [f"transformer_options.{key}" for key, item in value.items() if _filled(item)]
        elif _filled(value):
            unsupported.append(name)
    unsupported += [part for part in _PATCHER_PARTS if _filled(getattr(model, part, None))]
    if unsupported:
        raise InputError(input_name, f"carries patches the stage workers cannot rebuild: {', '.join(unsupported)}",
                         SUPPORTED)
    return guidance
