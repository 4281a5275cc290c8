"""The patches of a MODEL that the step-pipeline stages can carry, and how they travel.

Stage workers rebuild the model from (config, weights), so whatever a ModelPatcher carries
besides its weights has to be sent as plain data and rebuilt there:

- Weight patches (LoRA, LoRA-style model merges): the caller computes the patched weights with
  ComfyUI's own `comfy.lora.calculate_weight`, the way `ModelPatcher.patch_weight_to_device`
  does when KSampler loads the model (fp32 on the load device, rounded to the weight's dtype),
  and the workers receive those weights instead of the plain ones.
- The `sampler_cfg_function` of VideoLinearCFGGuidance / VideoTriangleCFGGuidance: closures,
  which cannot be pickled. They are recognised by their code (the node's own nested function)
  and described as plain data, {"node": ..., "min_cfg": ...}; the worker calls that node's
  `patch` on its rebuilt ModelPatcher with the same min_cfg.

Anything else (object patches, other model_options functions, transformer patches, wrappers,
hooks) is refused with an error naming what is supported.
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

from ..utils.errors import InputError

GUIDANCE_MODULE = "comfy_extras.nodes_video_model"
GUIDANCE_FILE = ("comfy_extras", "nodes_video_model.py")
GUIDANCE_NODES = ("VideoLinearCFGGuidance", "VideoTriangleCFGGuidance")
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


def cfg_guidance(function) -> dict | None:
    """{"node", "min_cfg"} when `function` is the CFG function of a known guidance node, else None.

    Known means: its code object is the function nested in that node's `patch`, in the module the
    function came from. That module is found by file, not name: ComfyUI's server loads
    comfy_extras by path, so there the module is named after its path, not `comfy_extras...`.
    """
    code = getattr(function, "__code__", None)
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    if code is None or Path(getattr(module, "__file__", None) or "").parts[-2:] != GUIDANCE_FILE:
        return None
    for node in GUIDANCE_NODES:
        patch = getattr(getattr(module, node, None), "patch", None)
        nested = [c for c in getattr(getattr(patch, "__code__", None), "co_consts", ()) if isinstance(c, types.CodeType)]
        if any(code is c for c in nested):
            cells = dict(zip(code.co_freevars, (cell.cell_contents for cell in function.__closure__ or ())))
            if isinstance(cells.get("min_cfg"), (int, float)):
                return {"node": node, "min_cfg": cells["min_cfg"]}
    return None


def describe_patches(model) -> dict | None:
    """The model's non-weight patches as plain data for the workers (None: there are none).

    Raises InputError naming each patch the workers could not rebuild.
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
        raise InputError("model", f"carries patches the stage workers cannot rebuild: {', '.join(unsupported)}",
                         SUPPORTED)
    return guidance


def patched_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights KSampler computes with: the original weights with this patcher's weight patches.

    Original weights come from `get_key_patches`, which reads ComfyUI's backup when another clone
    has patched the shared model in place (it stays loaded after a KSampler run).
    """
    import comfy.float
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher

    state = {}
    for key, (weight, convert_func), *patches in ((k, *v) for k, v in model.get_key_patches().items()):
        if not patches:
            state[key] = weight.detach().to("cpu")
            continue
        if comfy.model_patcher.get_key_weight(model.model, key)[1] is not None:
            raise InputError("model", f"has weight patches on a quantized weight ({key})",
                             "weight patches on plain (fp32 / fp16 / bf16) weights")
        temp = comfy.model_management.cast_to_device(weight, model.load_device, torch.float32, copy=True)
        out = comfy.lora.calculate_weight(patches, convert_func(temp, inplace=True), key)
        out = comfy.float.stochastic_rounding(out, weight.dtype, seed=comfy.model_patcher.string_to_seed(key))
        state[key] = out.detach().to("cpu")
    return state


def weights_key(model) -> tuple:
    """Identifies the weights patched_state_dict gives: the shared model and its weight patches."""
    return (id(model.model), model.patches_uuid if model.patches else None)


def apply_patches(patcher, guidance: dict | None):
    """The worker's rebuilt ModelPatcher with the described CFG patch, made by ComfyUI's own node."""
    if guidance is None:
        return patcher
    node = getattr(comfy_node_module(GUIDANCE_MODULE), guidance["node"])
    return node().patch(patcher, guidance["min_cfg"])[0]


def comfy_node_module(name: str):
    """Import one of ComfyUI's node modules outside its server.

    They `import nodes` (ComfyUI's nodes.py); load that file under its name first, since another
    folder on sys.path (a checkout of this pack, in tests) may hold a package called `nodes`.
    """
    from .comfy_runtime import ensure_comfy

    folder = ensure_comfy()
    if "nodes" not in sys.modules:
        spec = importlib.util.spec_from_file_location("nodes", Path(folder) / "nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["nodes"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["nodes"]
            raise
    return importlib.import_module(name)
