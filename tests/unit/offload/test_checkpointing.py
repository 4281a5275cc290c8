"""Gradient checkpointing: the same loss and gradients, less activation memory, clean undo."""
import ctypes
import ctypes.util
import json

import pytest
import torch
from torch import nn

from comfyui_parallel.offload.checkpointing import (disable_gradient_checkpointing, enable_gradient_checkpointing,
                                                    is_checkpointed)


class Block(nn.Module):
    """Small weights, wide activations: activation memory dominates."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 256)
        self.down = nn.Linear(256, 64)

    def forward(self, x, *, gate=1.0):
        return x + gate * self.down(torch.nn.functional.gelu(self.up(x)))


def make_blocks() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(Block() for _ in range(8))


def loss_and_grads(blocks: nn.ModuleList, x: torch.Tensor):
    blocks.zero_grad()
    x = x.clone().requires_grad_(True)
    h = x
    for block in blocks:
        h = block(h, gate=0.5)
    loss = h.square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in blocks.parameters()], x.grad


def peak_cpu_bytes(fn, tmp_path) -> int:
    """Peak of live CPU tensor memory during fn, from torch's memory profiler timeline."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        fn()
    path = tmp_path / "memory.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


def test_same_loss_and_gradients():
    x = torch.randn(512, 64)
    blocks = make_blocks()
    plain = loss_and_grads(blocks, x)
    enable_gradient_checkpointing(blocks)
    assert is_checkpointed(blocks)
    checkpointed = loss_and_grads(blocks, x)
    assert torch.equal(plain[0], checkpointed[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], checkpointed[1]))
    assert torch.equal(plain[2], checkpointed[2])


@pytest.mark.filterwarnings("ignore:`export_memory_timeline` is deprecated")
def test_lower_peak_activation_memory(tmp_path):
    torch.set_num_threads(1)
    x = torch.randn(2048, 64)
    blocks = make_blocks()
    plain = peak_cpu_bytes(lambda: loss_and_grads(blocks, x), tmp_path)
    enable_gradient_checkpointing(blocks)
    checkpointed = peak_cpu_bytes(lambda: loss_and_grads(blocks, x), tmp_path)
    activation_per_block = 2048 * (256 * 2 + 64) * 4
    assert checkpointed < plain - 4 * activation_per_block, (plain, checkpointed)


def test_disable_restores_forward_and_inference_untouched():
    blocks = make_blocks()
    original = [block.forward for block in blocks]
    enable_gradient_checkpointing(blocks)
    enable_gradient_checkpointing(blocks)
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(blocks[0](x), original[0](x))
    disable_gradient_checkpointing(blocks)
    assert not is_checkpointed(blocks)
    assert all("forward" not in block.__dict__ for block in blocks)
    assert [block.forward for block in blocks] == original


def fixed_mmap_threshold(n_bytes: int = 1 << 20) -> None:
    """Make glibc serve large allocations with mmap and return them on free, so RSS follows the
    live tensors (by default glibc raises its threshold after a free and keeps freed memory)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_mmap_threshold = -3
    assert libc.mallopt(m_mmap_threshold, n_bytes) == 1


def test_lower_peak_memory_seen_by_the_memory_monitor():
    """The pack's MemoryMonitor (process RSS) sees the activations checkpointing no longer keeps."""
    from comfyui_parallel.parallel.monitor import MemoryMonitor

    torch.set_num_threads(1)
    fixed_mmap_threshold()
    x = torch.randn(16384, 64)
    blocks = make_blocks()

    def peak_rise() -> int:
        with MemoryMonitor(devices=[], interval=0.001) as monitor:
            loss_and_grads(blocks, x)
        return monitor.peak_rss - monitor.timeline[0].rss

    plain = peak_rise()
    enable_gradient_checkpointing(blocks)
    checkpointed = peak_rise()
    saved_per_block = 16384 * (256 * 2 + 64) * 4  # up, gelu(up), input: what autograd keeps per block
    assert plain - checkpointed > 4 * saved_per_block, (plain, checkpointed)
