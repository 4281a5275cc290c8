"""Backend choice of a worker group: NCCL for CUDA tensors whenever the group maps CUDA to it.

The group a CUDA worker joins reports "cpu:gloo,cuda:nccl", never the bare name "nccl": the
step pipeline compared the name and so sent every tensor through gloo on the CPU.
"""
import pytest
import torch

from comfyui_parallel.parallel.backend import (CUDA_BACKEND, backends_by_device, group_backend, init_options,
                                               message_device)
from comfyui_parallel.parallel.launch import WorkerGroup
from comfyui_parallel.parallel.worker_runtime import WorkerSettings
from worker_groups import make_config, running_group


def test_cuda_workers_join_nccl_beside_gloo_with_their_device_id():
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert group_backend(gpus) == CUDA_BACKEND == "cpu:gloo,cuda:nccl"
    assert init_options(CUDA_BACKEND, gpus[1]) == {"device_id": gpus[1]}
    assert group_backend([torch.device("cpu")] * 2) == "gloo" and init_options("gloo", torch.device("cpu")) == {}


def test_a_gpu_named_twice_puts_the_whole_group_on_gloo():
    """NCCL refuses two ranks on one GPU; over gloo they run and their messages travel on the CPU."""
    shared = [torch.device("cuda", 0), torch.device("cuda", 0), torch.device("cuda", 1)]
    assert group_backend(shared) == "gloo"
    assert init_options("gloo", shared[0]) == {}  # no device_id: that binds NCCL
    assert message_device(group_backend(shared)) == torch.device("cpu")


def test_the_launcher_names_the_backend_to_every_rank():
    """Local workers and the join command of a remote rank carry the group's one choice."""
    group = WorkerGroup(make_config(1, remote_ranks=1, master_port=29990))
    assert group._worker_env(0, "cpu", {}, ("127.0.0.1", 1))["COMFYUI_PARALLEL_BACKEND"] == "gloo"
    assert "COMFYUI_PARALLEL_BACKEND=gloo" in group.join_command(1, device="cuda:0")
    environ = {"RANK": "0", "WORLD_SIZE": "1", "COMFYUI_PARALLEL_CONTROL": "127.0.0.1:1",
               "COMFYUI_PARALLEL_AUTHKEY": "00", "COMFYUI_PARALLEL_BACKEND": CUDA_BACKEND}
    assert WorkerSettings.from_environ(environ).backend == CUDA_BACKEND
    group.key_file().unlink(missing_ok=True)


def test_workers_join_the_backend_the_launcher_names():
    """The worker joins what COMFYUI_PARALLEL_BACKEND says, not what its own device alone would pick."""
    with WorkerGroup(make_config(2, env={"COMFYUI_PARALLEL_BACKEND": "cpu:gloo"})) as group:
        results = group.call("tests.unit.parallel.launch_fns:message_backend")
    assert results == [{"config": "cpu:gloo", "device": "cpu"}] * 2


@pytest.mark.parametrize("config,expected", [
    ("cpu:gloo,cuda:nccl", "cuda:1"), ("nccl", "cuda:1"), ("cuda:nccl", "cuda:1"),
    ("cpu:gloo,cuda:gloo", "cpu"), ("gloo", "cpu"),
])
def test_message_device_follows_the_cuda_backend(config, expected):
    assert message_device(config, cuda_index=1) == torch.device(expected)


def test_mixed_backend_string_is_read_per_device():
    assert backends_by_device(CUDA_BACKEND) == {"cpu": "gloo", "cuda": "nccl"}
    assert backends_by_device("gloo") == {"cpu": "gloo", "cuda": "gloo"}


def test_a_running_gloo_group_sends_on_the_cpu():
    """The CPU twin: real gloo workers read their group's mapping with the same functions."""
    results = running_group(2).call("tests.unit.parallel.launch_fns:message_backend")
    assert results == [{"config": "cpu:gloo,cuda:gloo", "device": "cpu"}] * 2
