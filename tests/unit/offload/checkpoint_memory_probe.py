"""Run by test_checkpointing.py in a fresh process: the MemoryMonitor's peak RSS rise of one
training step through checkpoint_blocks, plain and with gradient checkpointing, as JSON."""
import ctypes
import ctypes.util
import importlib.util
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("_alias", REPO / "utils" / "pack_alias.py")
_alias = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_alias)
_alias.register()

from checkpoint_blocks import loss_and_grads, make_blocks  # noqa: E402
from comfyui_parallel.offload.checkpointing import enable_gradient_checkpointing  # noqa: E402
from comfyui_parallel.parallel.monitor import MemoryMonitor  # noqa: E402


def fixed_mmap_threshold(n_bytes: int = 1 << 20) -> None:
    """glibc serves large allocations with mmap and returns them on free: RSS follows live tensors."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_mmap_threshold = -3
    if libc.mallopt(m_mmap_threshold, n_bytes) != 1:
        sys.exit("mallopt(M_MMAP_THRESHOLD) failed")


def peak_rise(blocks, x) -> int:
    """Peak RSS rise of a step, after one warm-up step (first calls allocate for good)."""
    loss_and_grads(blocks, x)
    with MemoryMonitor(devices=[], interval=0.001) as monitor:
        loss_and_grads(blocks, x)
    return monitor.peak_rss - monitor.timeline[0].rss


def main() -> None:
    torch.set_num_threads(1)
    fixed_mmap_threshold()
    x = torch.randn(16384, 64)
    blocks = make_blocks()
    plain = peak_rise(blocks, x)
    enable_gradient_checkpointing(blocks)
    print(json.dumps({"plain": plain, "checkpointed": peak_rise(blocks, x)}))


if __name__ == "__main__":
    main()
