"""Block offloading on plain modules: exact outputs, the prefetch schedule, the ledger, errors."""
import pytest
import torch
from torch import nn

from comfyui_parallel.offload import swap
from comfyui_parallel.offload.ledger import ResidentLedger, planned_peak
from comfyui_parallel.offload.swap import OffloadConfig, active_offloader, disable_offload, enable_offload
from comfyui_parallel.utils.errors import InputError


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.register_buffer("scale", torch.full((dim,), 0.5))

    def forward(self, x, *, shift=0.0):
        return torch.tanh(self.linear(x)) * self.scale + shift


class Stack(nn.Module):
    def __init__(self, num_blocks: int = 6, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(num_blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x, shift=0.1)
        return x


def block_bytes(block: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*block.parameters(), *block.buffers()])


@pytest.fixture
def model():
    return Stack().eval()


@pytest.mark.parametrize("blocks_to_swap", [0, 3, 6])
@pytest.mark.parametrize("prefetch", [0, 1, 2])
@pytest.mark.parametrize("compute_device", ["cpu", "cpu:1"])
def test_output_equal_with_and_without_offload(model, blocks_to_swap, prefetch, compute_device, request):
    """cpu:1 is a simulated device holding its own tensors: a swapped block computes there only on its copies."""
    if compute_device != "cpu":
        request.getfixturevalue("simulated_devices")
    x = torch.randn(2, 16)
    with torch.no_grad():
        expected = model(x)
        config = OffloadConfig(blocks_to_swap, prefetch_blocks=prefetch, compute_device=compute_device)
        offloader = enable_offload(model.blocks, config)
        got = [model(x.to(compute_device)).to("cpu"), model(x.to(compute_device)).to("cpu")]
        offloader.disable()
    assert all(torch.equal(expected, out) for out in got)
    assert not offloader.fetched and not offloader.handles
    swapped = [b.linear.weight.device for b in model.blocks[len(model.blocks) - blocks_to_swap:]]
    assert swapped == [torch.device("cpu")] * blocks_to_swap


def record_schedule(model, monkeypatch, config):
    """Timeline of (event, block) from a spy on `transfer`, block hooks and the ledger."""
    owner = {}
    for index, block in enumerate(model.blocks):
        for tensor in [*block.parameters(), *block.buffers()]:
            owner[tensor.data_ptr()] = index
    timeline = []
    real_transfer = swap.transfer

    def spy(tensor, device, non_blocking=False):
        timeline.append(("copy", owner[tensor.data_ptr()], torch.device(device)))
        return real_transfer(tensor, device, non_blocking)

    monkeypatch.setattr(swap, "transfer", spy)
    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=index: timeline.append(("start", i, None)))
    ledger = ResidentLedger(listeners=[lambda nbytes: timeline.append(("ledger", len(ledger.events), nbytes))])
    offloader = enable_offload(model.blocks, config, ledger)
    with torch.no_grad():
        model(torch.randn(1, 16))
    offloader.disable()
    return timeline, ledger


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_each_swapped_block_copied_once_ahead_by_prefetch(model, monkeypatch, prefetch):
    timeline, ledger = record_schedule(model, monkeypatch, OffloadConfig(4, prefetch_blocks=prefetch))
    starts = [i for kind, i, _ in timeline if kind == "start"]
    assert starts == list(range(6))
    for swapped in range(2, 6):
        copies = [n for n, (kind, i, _) in enumerate(timeline) if kind == "copy" and i == swapped]
        assert len(copies) == 3  # weight, bias, buffer: each once
        issued_during = max(i for kind, i, _ in timeline[:copies[0]] if kind == "start")
        assert issued_during == max(0, swapped - prefetch)
    fetches = [e.block for e in ledger.events if e.kind == "fetch"]
    releases = [e.block for e in ledger.events if e.kind == "release"]
    assert fetches == releases == [2, 3, 4, 5]


def test_resident_blocks_never_copied_and_ledger_peak_as_planned(model, monkeypatch):
    sizes = [block_bytes(b) for b in model.blocks]
    for swap_count in range(7):
        for prefetch in range(3):
            timeline, ledger = record_schedule(model, monkeypatch, OffloadConfig(swap_count, prefetch_blocks=prefetch))
            copied = {i for kind, i, _ in timeline if kind == "copy"}
            assert copied == set(range(6 - swap_count, 6))
            assert ledger.peak_bytes == planned_peak(sizes, swap_count, prefetch)
            assert ledger.resident_bytes == sum(sizes[: 6 - swap_count])


def test_planned_peak_window():
    sizes = [10, 20, 30, 40]
    assert planned_peak(sizes, 0, 1) == 100
    assert planned_peak(sizes, 4, 0) == 40
    assert planned_peak(sizes, 4, 1) == 70
    assert planned_peak(sizes, 2, 5, base_bytes=1) == 1 + 30 + 70


def test_release_after_exception_and_reenable(model):
    offloader = enable_offload(model.blocks, OffloadConfig(6, prefetch_blocks=1))
    with pytest.raises(RuntimeError), torch.no_grad():
        model(torch.randn(1, 5))  # wrong width: the first block fails after its hooks fetched
    assert offloader.fetched
    again = enable_offload(model.blocks, OffloadConfig(2))
    assert not offloader.fetched and active_offloader(model.blocks) is again
    disable_offload(model.blocks)
    assert active_offloader(model.blocks) is None


@pytest.mark.parametrize("field,value,allowed", [
    ("blocks_to_swap", 7, "0..6"), ("blocks_to_swap", -1, "0..6"),
    ("prefetch_blocks", -1, "0 or more"), ("offload_device", "meta", "cpu"),
])
def test_bad_config_names_the_input(model, field, value, allowed):
    config = OffloadConfig(1)
    setattr(config, field, value)
    with pytest.raises(InputError, match=f"^{field}:.*allowed: {allowed}"):
        enable_offload(model.blocks, config)


def test_gradients_refused_with_swapped_blocks(model):
    enable_offload(model.blocks, OffloadConfig(2))
    with pytest.raises(InputError, match="blocks_to_swap: .*inference only"):
        model(torch.randn(1, 16)).sum().backward()
    disable_offload(model.blocks)


def test_pin_memory_on_cpu_is_noop(model):
    x = torch.randn(1, 16)
    with torch.no_grad():
        expected = model(x)
        enable_offload(model.blocks, OffloadConfig(3, pin_memory=True))
        assert torch.equal(model(x), expected)
    disable_offload(model.blocks)


def test_choose_blocks_to_swap_fewest_that_fit():
    from comfyui_parallel.offload.ledger import choose_blocks_to_swap

    sizes = [10] * 6
    assert choose_blocks_to_swap(sizes, 1, 1000) == 0
    assert choose_blocks_to_swap(sizes, 1, 45, base_bytes=5) == 4  # 5 + 2 resident + 2 in flight
    assert choose_blocks_to_swap(sizes, 1, 24, base_bytes=5) is None


def test_real_copies_are_used_during_the_block_and_dropped_after(model, monkeypatch):
    """With a `transfer` that really copies (as to a GPU), blocks compute on the copies, then point back."""
    hosts = {id(p): p.data for p in model.blocks.parameters()}
    copies, seen = [], []
    monkeypatch.setattr(swap, "transfer", lambda t, device, non_blocking=False: copies.append(t.clone()) or copies[-1])
    for block in model.blocks:
        block.linear.register_forward_pre_hook(lambda m, a: seen.append(m.weight.data_ptr()))
    x = torch.randn(2, 16)
    with torch.no_grad():
        expected = model(x)
        offloader = enable_offload(model.blocks, OffloadConfig(4, prefetch_blocks=1))
        assert torch.equal(model(x), expected)
    copy_ptrs = {c.data_ptr() for c in copies}
    offloaded_run = seen[6:]  # the first 6 entries are the plain forward
    assert all(ptr in copy_ptrs for ptr in offloaded_run[2:])  # swapped blocks 2..5 ran on their copies
    assert all(ptr not in copy_ptrs for ptr in offloaded_run[:2])  # resident blocks 0, 1 on their own weights
    assert all(p.data_ptr() == hosts[id(p)].data_ptr() for p in model.blocks.parameters())  # pointed back
    assert offloader.ledger.resident_bytes == sum(block_bytes(b) for b in model.blocks[:2])
    offloader.disable()
