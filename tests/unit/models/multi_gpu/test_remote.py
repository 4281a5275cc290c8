"""models/multi_gpu/remote.py: the remote-worker inputs checked, and what the worker group is given."""
import pytest

from comfyui_parallel.models.multi_gpu.remote import RemoteWorkers, check_remote, refuse_patched
from comfyui_parallel.utils.errors import InputError


def test_no_remote_workers_is_none_and_a_valid_request_is_kept():
    assert check_remote(0, "127.0.0.1", 29500, "data_parallel", None) is None
    remote = check_remote(2, "10.0.0.5", 29500, "distributed", "/models/wan.safetensors")
    assert remote == RemoteWorkers(2, "10.0.0.5", 29500, "/models/wan.safetensors")


@pytest.mark.parametrize("args, message", [
    ((-1, "127.0.0.1", 29500, "distributed", "/m"), "negative"),
    ((1, "127.0.0.1", 29500, "block_distribution", "/m"), "parallelism_type 'block_distribution'"),
    ((1, "127.0.0.1", 29500, "distributed", None), "MultiGPULoader"),
    ((1, "127.0.0.1", 80, "distributed", "/m"), "master_port"),
])
def test_what_cannot_run_is_an_input_error_naming_the_input(args, message):
    with pytest.raises(InputError, match=message):
        check_remote(*args)


def test_group_options_take_a_fixed_key_from_the_environment(monkeypatch):
    remote = RemoteWorkers(1, "10.0.0.5", 29600, "/m")
    monkeypatch.delenv("COMFYUI_PARALLEL_AUTHKEY", raising=False)
    assert remote.group_options() == {"remote_ranks": 1, "master_addr": "10.0.0.5", "master_port": 29600}
    monkeypatch.setenv("COMFYUI_PARALLEL_AUTHKEY", "ab" * 32)
    assert remote.group_options()["authkey"] == "ab" * 32


def test_patched_weights_are_refused_only_with_remote_workers():
    refuse_patched(None, patched=True)
    refuse_patched(RemoteWorkers(1, "h", 29500, "/m"), patched=False)
    with pytest.raises(InputError, match="remote_workers"):
        refuse_patched(RemoteWorkers(1, "h", 29500, "/m"), patched=True)
