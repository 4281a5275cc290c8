"""The pack and ComfyUI in a tool's process (tests, demo, benchmarks, manifests).

The pack registers itself as `comfyui_parallel` through utils/pack_alias.py, loaded by
path: putting utils/ on sys.path would expose its modules under generic top-level names.
"""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def register_pack():
    """The pack's package module, importable as `comfyui_parallel` from here on."""
    spec = importlib.util.spec_from_file_location("_comfyui_parallel_alias", REPO / "utils" / "pack_alias.py")
    alias = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alias)
    return alias.register()


def comfy_on_path(comfyui_dir=None) -> None:
    """Make `comfy` importable in this process (cpu mode when there is no GPU)."""
    register_pack()
    from comfyui_parallel.models.comfy.runtime import ensure_comfy

    ensure_comfy(comfyui_dir)
