"""Shared test setup: the pack importable as `comfyui_parallel`, ComfyUI importable as `comfy`."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_comfyui_parallel_alias", REPO / "utils" / "pack_alias.py")
_alias = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_alias)
_alias.register()

COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui")).resolve()
if str(COMFYUI_DIR) not in sys.path:
    sys.path.append(str(COMFYUI_DIR))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `devtools`

# pytest imports the repo's own __init__.py (the pack) while collecting; its nodes import
# ComfyUI, which must be configured for this machine (cpu without a GPU) before that.
from comfyui_parallel.models.comfy_runtime import ensure_comfy  # noqa: E402

ensure_comfy(COMFYUI_DIR)


@pytest.fixture(scope="session")
def models_cache() -> Path:
    """Small random-weight models in real formats, written once per checkout."""
    from devtools.demo_models import ensure_models

    cache = REPO / "out" / "models-cache"
    ensure_models(cache)
    return cache
