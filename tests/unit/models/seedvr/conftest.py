"""Small SeedVR models shared by the unit tests (built once per module, float32, CPU)."""
import pytest
import torch

from comfyui_parallel.models.seedvr import build, config


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_v2():
    return build.small_models(config.small_dit("v2"), config.small_vae())


@pytest.fixture(scope="module")
def tiny_v1():
    return build.small_models(config.small_dit("v1"), config.small_vae())
