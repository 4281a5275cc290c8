"""Backend choice of a worker group: NCCL for CUDA tensors whenever the group maps CUDA to it.

The group a CUDA worker joins reports "cpu:gloo,cuda:nccl", never the bare name "nccl": the
step pipeline compared the name and so sent every tensor through gloo on the CPU.
"""
import pytest
import torch

from comfyui_parallel.parallel.backend import (CUDA_BACKEND, backends_by_device, group_backend, init_options,
                                               message_device)
from worker_groups import running_group


def test_cuda_workers_join_nccl_beside_gloo_with_their_device_id():
    gpu = torch.device("cuda", 1)
    assert group_backend(gpu) == CUDA_BACKEND == "cpu:gloo,cuda:nccl"
    assert init_options(gpu) == {"device_id": gpu}
    assert group_backend(torch.device("cpu")) == "gloo" and init_options(torch.device("cpu")) == {}


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
