"""Block distribution over simulated CPU devices: same output as the plain module, blocks ran
where planned (recorded), inputs moved at each boundary, undo restores the module."""
import pytest
import torch
from torch import nn

from comfyui_parallel.parallel.devices import parse_gpu_ids, same_device
from comfyui_parallel.parallel.placement import distribute_blocks, move_to
from comfyui_parallel.parallel.plan import block_bytes, plan_blocks
from tiny_transformer import TinyTransformer, example_inputs


@pytest.mark.parametrize("gpu_ids", ["cpu,cpu", "cpu,cpu,cpu"])
def test_output_equals_plain_module(gpu_ids, simulated_devices):
    """On simulated devices that hold their own tensors: a block on cpu:1 computes on cpu:1 only."""
    model, inputs = TinyTransformer(), example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    devices = parse_gpu_ids(gpu_ids)
    plan = plan_blocks(block_bytes(model.blocks), [10 ** 9] * len(devices))
    dist = distribute_blocks(model.blocks, devices, plan.assignment, devices[0])
    with torch.no_grad():
        got = model(*inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert dist.ran_on == [(i, devices[a]) for i, a in enumerate(plan.assignment)]
    assert {d for _, d in dist.ran_on} == set(devices)
    assert dist.block_devices == [devices[a] for a in plan.assignment]
    assert all(same_device(b.qkv.weight.device, d) for b, d in zip(model.blocks, dist.block_devices))


def test_ran_on_records_every_forward():
    model, inputs = TinyTransformer(depth=4), example_inputs()
    devices = parse_gpu_ids("cpu,cpu")
    dist = distribute_blocks(model.blocks, devices, [0, 0, 1, 1], devices[0])
    with torch.no_grad():
        model(*inputs)
        model(*inputs)
    assert [i for i, _ in dist.ran_on] == [0, 1, 2, 3] * 2
    assert "blocks 0-1 on cpu:0\nblocks 2-3 on cpu:1" == dist.describe()


def test_undo_restores_module():
    model, inputs = TinyTransformer(depth=3), example_inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(*inputs)
    devices = parse_gpu_ids("cpu,cpu,cpu")
    dist = distribute_blocks(model.blocks, devices, [0, 1, 2], devices[0])
    dist.undo()
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device == before[k].device for k in before)
    with torch.no_grad():
        model(*inputs)
        torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=0)
    assert len(dist.ran_on) == 0


def test_move_to_nested_keeps_identity_when_nothing_moves():
    options = {"patches": {}, "sigmas": torch.ones(2)}
    args = (torch.zeros(1), [torch.ones(1), "text"], options)
    assert move_to(args, torch.device("cpu", 0)) is args


def test_move_to_nested_moves_meta_tensors_and_rebuilds_containers():
    args = (torch.zeros(2), {"a": [torch.ones(1), 3]})
    moved = move_to(args, torch.device("meta"))
    assert moved is not args and moved[0].device.type == "meta"
    assert moved[1]["a"][0].device.type == "meta" and moved[1]["a"][1] == 3
    assert args[0].device.type == "cpu"


def test_shared_inputs_move_once_per_device():
    cache = {}
    context = torch.ones(3)
    first = move_to({"context": context}, torch.device("meta"), cache)["context"]
    second = move_to((context,), torch.device("meta"), cache)[0]
    assert first is second
    del context, first, second
    assert cache == {}


def test_last_block_output_returns_to_main_device():
    """The meta device stands in for a second real device: only the last block's output goes there."""
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
    devices = parse_gpu_ids("cpu,cpu")
    dist = distribute_blocks(blocks, devices, [0, 1], torch.device("meta"))
    hidden = blocks[0](torch.zeros(2, 4))
    assert hidden.device.type == "cpu"
    assert blocks[1](hidden).device.type == "meta"
    assert dist.original_devices == [torch.device("cpu")] * 2


def test_bad_assignment_refused():
    blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
    with pytest.raises(ValueError, match="3 blocks"):
        distribute_blocks(blocks, [torch.device("cpu")], [0, 0], torch.device("cpu"))
    with pytest.raises(ValueError, match="outside"):
        distribute_blocks(blocks, [torch.device("cpu")], [0, 1, 0], torch.device("cpu"))


class Injecting(nn.Module):
    """A forward that adds a main-device tensor after every block (as Wan VACE adds its skip)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.skip = nn.Linear(4, 4)

    def forward(self, x):
        for block in self.blocks:
            x = block(x) + self.skip(x.to(self.skip.weight.device))
        return x


@pytest.mark.parametrize("return_each_block", [False, True])
def test_a_forward_working_between_blocks_needs_each_output_back(return_each_block, simulated_devices):
    model, x = Injecting(), torch.randn(2, 4)
    with torch.no_grad():
        expected = model(x)
        distribute_blocks(model.blocks, parse_gpu_ids("cpu,cpu"), [0, 1, 1], torch.device("cpu"), return_each_block)
        if not return_each_block:
            with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
                model(x)
            return
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_leave_on_main_hooks_main_blocks_without_moving_them(simulated_devices):
    """The loader (ComfyUI) places the main device's blocks itself: neither placement nor undo moves them."""
    model, inputs = TinyTransformer(depth=4), example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    devices = parse_gpu_ids("cpu,cpu")
    dist = distribute_blocks(model.blocks, devices, [0, 0, 1, 1], torch.device("cpu"), leave_on_main=True)
    assert dist.original_devices[:2] == [None, None]
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=0)
    assert [i for i, _ in dist.ran_on] == [0, 1, 2, 3]
    assert model.blocks[2].qkv.weight.device == torch.device("cpu", 1)
    dist.undo()
    assert all(b.qkv.weight.device == torch.device("cpu") for b in model.blocks)
