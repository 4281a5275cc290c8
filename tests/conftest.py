"""Shared test setup: the pack importable as `comfyui_parallel`, ComfyUI importable as `comfy`."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui")).resolve()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `devtools`

from devtools.pack import comfy_on_path  # noqa: E402

# pytest imports the repo's own __init__.py (the pack) while collecting; its nodes import
# ComfyUI, which must be configured for this machine (cpu without a GPU) before that.
comfy_on_path(COMFYUI_DIR)


@pytest.fixture(scope="session")
def models_cache() -> Path:
    """Small random-weight models in real formats, written once per checkout."""
    from devtools.demo_models import ensure_models

    cache = REPO / "out" / "models-cache"
    ensure_models(cache)
    return cache


@pytest.fixture
def simulated_devices():
    """Devices cpu:1, cpu:2, ... that really hold their own tensors (devtools/simulated_devices.py)."""
    from devtools.simulated_devices import simulated_devices as turn_on

    with turn_on():
        yield
