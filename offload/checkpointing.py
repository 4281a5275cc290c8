"""Gradient checkpointing on a block list: keep each block's input, recompute its inside in backward.

Training memory is dominated by the activations autograd saves inside every block. With
checkpointing a block saves only its inputs; its forward is run again during backward
(`torch.utils.checkpoint`, non-reentrant, so keyword arguments and non-tensor inputs work).
Without gradients (sampling) the block runs untouched.
"""
from functools import partial

import torch.utils.checkpoint
from torch import nn

_ORIGINAL_FORWARD = "_comfyui_parallel_unchecked_forward"


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(blocks: nn.ModuleList) -> None:
    """Checkpoint every block of `blocks` (idempotent)."""
    for block in blocks:
        if _ORIGINAL_FORWARD in block.__dict__:
            continue
        original = block.forward
        object.__setattr__(block, _ORIGINAL_FORWARD, original)
        object.__setattr__(block, "forward", partial(_checkpointed, original))


def disable_gradient_checkpointing(blocks: nn.ModuleList) -> None:
    """Undo `enable_gradient_checkpointing` (no-op for blocks that are not checkpointed)."""
    for block in blocks:
        if _ORIGINAL_FORWARD in block.__dict__:
            del block.__dict__["forward"]
            del block.__dict__[_ORIGINAL_FORWARD]


def is_checkpointed(blocks: nn.ModuleList) -> bool:
    """True when every block of `blocks` is checkpointed."""
    return len(blocks) > 0 and all(_ORIGINAL_FORWARD in block.__dict__ for block in blocks)
