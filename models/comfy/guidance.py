"""ComfyUI's CFG guidance nodes, recognised in a MODEL and re-applied in a worker.

The `sampler_cfg_function` of VideoLinearCFGGuidance / VideoTriangleCFGGuidance is a closure,
which cannot be pickled. It is recognised by its code (the node's own nested function) and
described as plain data, {"node": ..., "min_cfg": ...}; a worker calls that node's `patch` on
its rebuilt ModelPatcher with the same min_cfg.
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

from .runtime import ensure_comfy

GUIDANCE_MODULE = "comfy_extras.nodes_video_model"
GUIDANCE_FILE = ("comfy_extras", "nodes_video_model.py")
GUIDANCE_NODES = ("VideoLinearCFGGuidance", "VideoTriangleCFGGuidance")


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
