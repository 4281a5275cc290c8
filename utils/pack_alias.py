"""Register this pack under a stable module name, whatever its folder is called.

ComfyUI imports the pack by its folder path (often with a hyphen). Worker processes and
tests, which start outside ComfyUI, import it as ``comfyui_parallel`` instead: the package
object is registered without running ``__init__.py`` (which needs a running ComfyUI), so
``comfyui_parallel.parallel.plan`` and friends import with plain relative imports.
This file has no imports of the pack so that it can be loaded by path.
"""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PACK_ALIAS = "comfyui_parallel"
PACK_DIR = Path(__file__).resolve().parents[1]


def register(name: str = PACK_ALIAS):
    """Return the pack's package module, registering it in sys.modules if needed."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(PACK_DIR)]
    package = importlib.util.module_from_spec(spec)
    package.__file__ = str(PACK_DIR / "__init__.py")
    sys.modules[name] = package
    return package
