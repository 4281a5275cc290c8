"""A block stack whose activations dominate its weights (shared by the checkpointing tests)."""
import torch
from torch import nn


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
