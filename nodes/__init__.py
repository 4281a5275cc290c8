"""Every node module in this folder, merged into ComfyUI's mappings.

Each module ends with its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS, as
ComfyUI's comfy_extras/nodes_*.py do; this file gathers them, and lets ComfyUI's "free memory"
(POST /free) end the worker groups the pack keeps between prompts (those not running a call).
"""
import importlib
import pkgutil

from ..models.comfy.server import on_free
from ..parallel.pool import POOL

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f".{_info.name}", __name__)
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

on_free(POOL.close_idle)
