"""ComfyUI's --highvram / --gpu-only (its HIGH_VRAM state) build every model whole on the first GPU before
the pack can place blocks: block_distribution, distributed and offload say so in a warning naming the flag.

The CPU run has no GPU (ComfyUI's state is DISABLED there), so the state ComfyUI derives from each flag
is set on comfy.model_management as its start-up would, and ComfyUI's own args carry the flag."""
import logging

import pytest

from multi_gpu_helpers import load_tiny_wan  # configures ComfyUI for the CPU first

import comfy.model_management as mm  # noqa: E402
from comfyui_parallel.models.comfy.management import whole_model_flag  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.offload.patcher import OffloadSettings, apply_offload  # noqa: E402


@pytest.fixture(params=["--highvram", "--gpu-only"])
def flag(request, monkeypatch):
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.HIGH_VRAM)
    monkeypatch.setattr(mm.args, "highvram", request.param == "--highvram")
    monkeypatch.setattr(mm.args, "gpu_only", request.param == "--gpu-only")
    return request.param


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ComfyUI-Parallel" in r.getMessage()]


@pytest.mark.parametrize("mode", ["block_distribution", "distributed"])
def test_placing_modes_warn_naming_the_flag(models_cache, flag, mode, caplog):
    model = load_tiny_wan(models_cache)
    apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, "cpu,cpu")))
    [message] = warnings_of(caplog)
    assert f"started with {flag}" in message and mode in message and "without --highvram / --gpu-only" in message


def test_offload_warns_naming_the_flag(models_cache, flag, caplog):
    apply_offload(load_tiny_wan(models_cache), OffloadSettings(1))
    [message] = warnings_of(caplog)
    assert f"started with {flag}" in message and "offload" in message


@pytest.mark.parametrize("mode", ["none", "data_parallel"])
def test_modes_that_keep_the_whole_model_on_a_gpu_do_not_warn(models_cache, flag, mode, caplog):
    model = load_tiny_wan(models_cache)
    apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, "cpu,cpu" if mode != "none" else "cpu")))
    assert warnings_of(caplog) == []


def test_no_flag_no_warning(models_cache, caplog):
    assert whole_model_flag() is None
    model = load_tiny_wan(models_cache)
    apply_multi_gpu(model, resolve(model, MultiGPURequest("block_distribution", "cpu,cpu")))
    apply_offload(load_tiny_wan(models_cache), OffloadSettings(1))
    assert warnings_of(caplog) == []
