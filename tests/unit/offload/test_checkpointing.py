"""Gradient checkpointing: the same loss and gradients, less activation memory, clean undo."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint_blocks import loss_and_grads, make_blocks
from comfyui_parallel.offload.checkpointing import (disable_gradient_checkpointing, enable_gradient_checkpointing,
                                                    is_checkpointed)


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


def test_lower_peak_memory_seen_by_the_memory_monitor():
    """The pack's MemoryMonitor (process RSS) sees the activations checkpointing no longer keeps.

    Measured in a fresh process: in the test process, memory freed by earlier tests stays
    resident and is reused, so RSS would not follow the activations.
    """
    probe = Path(__file__).with_name("checkpoint_memory_probe.py")
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rises = json.loads(done.stdout.strip().splitlines()[-1])
    saved_per_block = 16384 * (256 * 2 + 64) * 4  # up, gelu(up), input: what autograd keeps per block
    assert rises["plain"] - rises["checkpointed"] > 4 * saved_per_block, rises
