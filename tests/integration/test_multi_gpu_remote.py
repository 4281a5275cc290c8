"""distributed with workers on other machines: processes on 127.0.0.1 stand in for them, started with
the printed join command (no key in it, the key file), loading the model file themselves.

Each run equals the plain graph for the same seed, for replicate and fsdp.
"""
import subprocess
import sys

import pytest
import torch

from multi_gpu_helpers import TINY_WAN, load_tiny_wan, sample  # configures ComfyUI for the CPU first

from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402
from devtools.comfy_server import free_port  # noqa: E402

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def request(models_cache, sharding: str, remote_workers: int = 1, mode: str = "distributed", model_file=True):
    path = str(models_cache / "diffusion_models" / TINY_WAN) if model_file else None
    return MultiGPURequest(mode, "cpu", weight_sharding=sharding, remote_workers=remote_workers,
                           master_addr="127.0.0.1", master_port=free_port(), model_file=path)


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_a_worker_started_by_the_join_command_computes_with_the_server(models_cache, sharding):
    expected = sample(load_tiny_wan(models_cache))
    base = load_tiny_wan(models_cache)
    model = apply_multi_gpu(base, resolve(base, request(models_cache, sharding)))
    runner = runner_of(model)
    group = runner.lease.get()
    command = group.join_command(1, device="cpu", comfyui_dir=group.config.comfyui_dir, python=sys.executable)
    assert group._authkey.hex() not in command
    remote = subprocess.Popen(["bash", "-c", command])
    try:
        torch.testing.assert_close(sample(model), expected, **TOLERANCE)
        assert group.world_size == 2 and len(runner.pids) == 1, "one local worker, one joined by the command"
        held = group.call("models.multi_gpu.sharding:held_bytes")
        assert [h["sharding"] for h in held] == [sharding] * 2
        if sharding == "fsdp":
            assert held[0]["blocks"] + held[1]["blocks"] > 0 and abs(held[0]["blocks"] - held[1]["blocks"]) < 0.05 * (
                held[0]["blocks"] + held[1]["blocks"]), "the remote rank holds its half of the blocks"
    finally:
        runner.close()
        remote.wait(timeout=60)
    assert remote.returncode == 0


def test_remote_workers_need_distributed_and_the_model_file(models_cache):
    base = load_tiny_wan(models_cache)
    with pytest.raises(InputError, match="remote_workers"):
        resolve(base, request(models_cache, "auto", mode="data_parallel"))
    with pytest.raises(InputError, match="remote_workers"):
        resolve(base, request(models_cache, "auto", model_file=False))
    with pytest.raises(InputError, match="gpu_ids"):  # one local device and no remote worker: not a group
        resolve(base, request(models_cache, "auto", remote_workers=0))
    assert resolve(base, request(models_cache, "auto")).remote.ranks == 1


def test_a_lora_patched_model_is_refused_for_remote_workers(models_cache):
    base = load_tiny_wan(models_cache)
    model = apply_multi_gpu(base, resolve(base, request(models_cache, "replicate"))).clone()
    key = "diffusion_model.blocks.0.self_attn.k.weight"
    model.add_patches({key: (torch.full_like(model.model.state_dict()[key], 0.02),)}, strength_patch=1.0)
    try:
        with pytest.raises(InputError, match="remote_workers"):
            sample(model)
    finally:
        runner_of(model).close()
