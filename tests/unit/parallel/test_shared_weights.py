"""Shared-memory weights: exact round trip, zero-copy across worker processes, rebuild, release."""
import pickle
from multiprocessing import shared_memory

import pytest
import torch
from safetensors.torch import save_file

from comfyui_parallel.parallel import shared_weights
from comfyui_parallel.parallel.shared_weights import SharedWeights, rebuild_module, share_state_dict
from comfyui_parallel.utils.errors import InputError
from worker_groups import FNS, running_group


def mixed_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=generator),
        "bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "f16": torch.randn(2, 2, 2, generator=generator).half(),
        "i64": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=generator).t(),
    }


def test_round_trip_is_exact_for_every_dtype_and_shape():
    state = mixed_state()
    handle = share_state_dict(state)
    try:
        opened = pickle.loads(pickle.dumps(handle)).open()
        assert list(opened) == list(state)
        for name, tensor in state.items():
            assert opened[name].dtype == tensor.dtype and opened[name].shape == tensor.shape, name
            assert torch.equal(opened[name], tensor), name
            assert opened[name].data_ptr() % shared_weights.ALIGN == 0 or tensor.numel() == 0
    finally:
        handle.release()


def test_opens_are_views_of_one_block():
    handle = share_state_dict({"w": torch.zeros(4)})
    try:
        first, second = handle.open()["w"], SharedWeights.from_spec(handle.spec()).open()["w"]
        first[2] = 9.0
        assert second[2] == 9.0
    finally:
        handle.release()


def test_release_unlinks_the_block_and_keeps_views_valid():
    handle = share_state_dict({"w": torch.ones(3)})
    view = handle.open()["w"]
    handle.release()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=handle.shm_name)
    assert view.sum() == 3


@pytest.mark.parametrize("size", [2, 3])
def test_workers_use_the_same_pages_zero_copy(size):
    group = running_group(size)
    linear = torch.nn.Linear(4, 3)
    handle = share_state_dict(linear.state_dict())
    try:
        x = torch.randn(5, 4)
        results = group.call(f"{FNS}:run_shared_linear", handle, x, True)
        with torch.no_grad():
            expected = linear(x)
        for result in results:
            torch.testing.assert_close(result, expected, rtol=0, atol=0)
        assert handle.open()["bias"][0] == 42.0  # written by worker 0 into the shared block
    finally:
        handle.release()


def test_rebuild_from_shared_weights_state_dict_and_file(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(6, 2)
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = module(x)
    path = tmp_path / "linear.safetensors"
    save_file(module.state_dict(), str(path))
    handle = share_state_dict(module.state_dict())
    try:
        for weights in (handle, module.state_dict(), path, str(path)):
            rebuilt = rebuild_module("torch.nn:Linear", {"in_features": 6, "out_features": 2}, weights)
            with torch.no_grad():
                assert torch.equal(rebuilt(x), expected)
    finally:
        handle.release()


def test_rebuild_keeps_buffers_computed_in_init():
    from launch_fns import WithBuffer

    source = WithBuffer(4)
    rebuilt = rebuild_module(".tests.unit.parallel.launch_fns:WithBuffer", {"width": 4}, source.state_dict())
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), source(x))


def test_clear_errors():
    with pytest.raises(InputError, match="^class_path: "):
        rebuild_module("torch.nn.Linear", {}, {})
    with pytest.raises(InputError, match="^weights: .* is not a file"):
        shared_weights.load_weights("/no/such/file.safetensors")
    with pytest.raises(InputError, match="^state_dict: 'm' is not a tensor with data"):
        share_state_dict({"m": torch.empty(2, device="meta")})
    with pytest.raises(InputError, match="^weights: need .* shared memory"):
        shared_weights._check_space(2**62)


def test_a_reader_process_exiting_does_not_unlink_the_block():
    """Python's resource tracker would unlink an attached block when the reader exits."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    utils = Path(shared_weights.__file__).resolve().parents[1] / "utils"
    script = ("import json, sys; sys.path.insert(0, sys.argv[2]); import pack_alias; pack_alias.register(); "
              "from comfyui_parallel.parallel.shared_weights import SharedWeights; "
              "print(float(SharedWeights.from_spec(json.loads(sys.argv[1])).open()['w'].sum()))")
    handle = share_state_dict({"w": torch.full((8,), 0.5)})
    try:
        done = subprocess.run([sys.executable, "-c", script, json.dumps(handle.spec()), str(utils)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "4.0"
        assert SharedWeights.from_spec(handle.spec()).open()["w"].sum() == 4.0
        shared_memory.SharedMemory(name=handle.shm_name).close()  # still there
    finally:
        handle.release()


def test_move_into_makes_the_module_compute_from_the_shared_block():
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).eval()
    x = torch.randn(4, 8)
    expected = module(x)
    weights = share_state_dict(module.state_dict())
    params = dict(module.named_parameters())
    try:
        moved = shared_weights.move_into(module, weights)
        views = weights.open()
        assert moved == sum(t.numel() * t.element_size() for t in module.state_dict().values())
        for name, tensor in module.state_dict().items():
            assert tensor.data_ptr() == views[name].data_ptr(), name
        assert all(module.get_parameter(name) is param for name, param in params.items()), "same Parameter objects"
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
        assert shared_weights.move_into(module, weights) == 0, "already there: nothing moves"
    finally:
        weights.release()
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)  # the mapping lives while tensors view it


def test_move_into_leaves_tensors_whose_copy_does_not_match():
    module = torch.nn.Linear(4, 4)
    weights = share_state_dict({"weight": module.weight.detach().double(), "bias": module.bias.detach()})
    try:
        assert shared_weights.move_into(module, weights) == module.bias.numel() * 4
        assert module.weight.dtype == torch.float32 and module.weight.data_ptr() != weights.open()["weight"].data_ptr()
    finally:
        weights.release()
