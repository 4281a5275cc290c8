"""Data parallel over simulated CPU devices: same output as the plain module, the batch really
split over the replicas (recorded), batch 1 on the main device, replicas refreshed in place when the
caller's identity of the weights changes."""
import pytest
import torch

from comfyui_parallel.parallel.devices import parse_gpu_ids
from comfyui_parallel.parallel.replicate import DataParallel, gather, split_batch, split_sizes
from tiny_transformer import TinyTransformer, example_inputs


@pytest.mark.parametrize("gpu_ids, batch", [("cpu,cpu", 2), ("cpu,cpu", 4), ("cpu,cpu,cpu", 3), ("cpu,cpu,cpu", 5)])
def test_output_equals_plain_module(gpu_ids, batch, simulated_devices):
    """On simulated devices that hold their own tensors: each replica and its chunk on its own device."""
    torch.set_num_threads(1)
    model = TinyTransformer()
    x, timestep, context = example_inputs(batch=batch)
    with torch.no_grad():
        expected = model(x, timestep, context=context, transformer_options={"sigmas": timestep})
        devices = parse_gpu_ids(gpu_ids)
        dp = DataParallel(model, devices)
        got = dp(x, timestep, context=context, transformer_options={"sigmas": timestep})
    replica_devices = [next(r.parameters()).device for r in dp.replicas[1:]]
    dp.close()
    # same math; CPU kernels pick different blockings for different batch shapes (~1e-7 apart)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sorted(i for i, _, _ in dp.ran_on) == list(range(len(devices)))
    assert sum(rows for _, _, rows in dp.ran_on) == batch
    assert dp.replicas[0] is model and all(r is not model for r in dp.replicas[1:])
    assert replica_devices == devices[1:]


def test_batch_of_one_runs_on_main_device_only():
    model = TinyTransformer(depth=2)
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu"))
    x, t, c = example_inputs(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(dp(x, t, c), model(x, t, c), rtol=0, atol=0)
    assert dp.ran_on == [(0, torch.device("cpu", 0), 1)]


def test_weighted_split():
    assert split_sizes(10, [1, 1]) == [5, 5]
    assert split_sizes(10, [3, 1]) == [8, 2]
    assert split_sizes(2, [1, 1, 1]) == [1, 1, 0]
    assert split_sizes(7, [0, 1]) == [0, 7]
    model = TinyTransformer(depth=2)
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu"), weights=[3, 1])
    with torch.no_grad():
        dp(*example_inputs(batch=4))
    assert sorted(dp.ran_on) == [(0, torch.device("cpu", 0), 3), (1, torch.device("cpu", 1), 1)]


class Version:
    """A caller's identity of the source weights: bumped whenever it changes them (as ComfyUI's patches_uuid)."""

    def __init__(self):
        self.value = 0

    def __call__(self):
        return self.value


def test_replicas_refresh_when_the_identity_changes():
    model = TinyTransformer(depth=2)
    version = Version()
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu"), identity=version)
    inputs = example_inputs(batch=2)
    with torch.no_grad():
        dp(*inputs)
        model.blocks[1].proj.weight.add_(0.5)  # an in-place patch (ComfyUI's inplace LoRA update)
        version.value += 1
        torch.testing.assert_close(dp(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
        model.head.weight = torch.nn.Parameter(model.head.weight * 2)  # a replaced tensor
        version.value += 1
        torch.testing.assert_close(dp(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(dp.replicas[1].head.weight, model.head.weight)
    assert not dp.refresh_if_changed()


def test_new_values_at_the_old_address_refresh_the_replicas():
    """A re-patched weight can sit where the old one did (the allocator reuses the freed block; an inference
    tensor keeps no version counter): the caller's identity, not the address, tells the replicas."""
    with torch.inference_mode():
        model = TinyTransformer(depth=1)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        version = Version()
        dp = DataParallel(model, parse_gpu_ids("cpu,cpu"), identity=version)
        inputs = example_inputs(batch=2)
        dp(*inputs)
        address = model.head.weight.data_ptr()
        model.head.weight.mul_(3.0)
        version.value += 1
        assert model.head.weight.data_ptr() == address
        torch.testing.assert_close(dp(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_refresh_copies_into_the_existing_replicas():
    model = TinyTransformer(depth=2)
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu,cpu"))
    before = [dict(r.named_parameters()) for r in dp.replicas[1:]]
    addresses = [{n: p.data_ptr() for n, p in params.items()} for params in before]
    with torch.no_grad():
        model.blocks[0].proj.weight.mul_(-1.0)
        model.head.weight = torch.nn.Parameter(model.head.weight + 1.0)
    dp.refresh()
    for replica, params, ptrs in zip(dp.replicas[1:], before, addresses):
        now = dict(replica.named_parameters())
        assert all(now[name] is params[name] and now[name].data_ptr() == ptrs[name] for name in params)
        for name, tensor in model.named_parameters():
            assert torch.equal(now[name], tensor), name


def test_a_changed_layout_builds_new_replicas():
    model = TinyTransformer(depth=1)
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu"))
    old = dp.replicas[1]
    model.head = torch.nn.Linear(model.head.in_features, model.head.out_features, dtype=torch.float64)
    dp.refresh()
    assert dp.replicas[1] is not old and dp.replicas[1].head.weight.dtype == torch.float64


def test_inference_tensor_replicas_take_new_values():
    with torch.inference_mode():
        model = TinyTransformer(depth=1)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        assert model.head.weight.is_inference()
        version = Version()
        dp = DataParallel(model, parse_gpu_ids("cpu,cpu"), identity=version)
        inputs = example_inputs(batch=2)
        dp(*inputs)
        model.head.weight = torch.nn.Parameter(model.head.weight * 3, requires_grad=False)
        version.value += 1
        torch.testing.assert_close(dp(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_split_and_gather_nested():
    x = torch.arange(6).view(3, 2)
    shared = torch.zeros(5)
    pieces = split_batch(((x,), {"opts": {"sigmas": torch.arange(3), "tag": "a"}, "s": shared}), 3, [2, 1])
    (args0,), kwargs0 = pieces[0]
    assert torch.equal(args0, x[:2]) and kwargs0["s"] is shared and kwargs0["opts"]["tag"] == "a"
    assert torch.equal(pieces[1][1]["opts"]["sigmas"], torch.tensor([2]))
    unbatched = {"transformer_options": {"block": None}}
    first, second = split_batch(((x,), unbatched), 3, [2, 1])
    assert first[1]["transformer_options"] is not second[1]["transformer_options"], "replicas write into their own"
    out = gather([(x[:2], {"y": x[:2]}), (x[2:], {"y": x[2:]})], torch.device("cpu"))
    assert torch.equal(out[0], x) and torch.equal(out[1]["y"], x)


def test_grad_mode_follows_the_caller_into_threads():
    model = TinyTransformer(depth=1)
    dp = DataParallel(model, parse_gpu_ids("cpu,cpu"))
    with torch.no_grad():
        assert not dp(*example_inputs(batch=2)).requires_grad
    assert dp(*example_inputs(batch=2)).requires_grad


def test_bad_weights_refused():
    with pytest.raises(ValueError, match="weights"):
        DataParallel(TinyTransformer(depth=1), parse_gpu_ids("cpu,cpu"), weights=[1])
