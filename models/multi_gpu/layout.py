"""How one distributed call lays out the ranks, decided per call from the batch it holds.

From 4 ranks on (an even count) a call whose batch splits in two (CFG's cond and uncond, or
two latents) runs as two CFG groups, each half of the ranks splitting its rows' tokens. A
call with a batch that does not split (cfg 1 with distilled / lightning LoRAs, or ComfyUI
sending cond and uncond separately when memory is short) puts every rank on that batch's
sequence, so no two ranks compute the same tokens. Workers and the server both ask
`call_layout`, so they agree on which ranks return which rows.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """`groups` CFG groups of `size` sequence ranks each (groups * size == world)."""

    groups: int
    size: int

    def place(self, rank: int) -> tuple[int, int]:
        """(CFG share index, rank inside its sequence group) of a global rank."""
        return rank // self.size, rank % self.size


def most_cfg_groups(world: int) -> int:
    """CFG groups a call with a splittable batch gets: two halves from 4 ranks on (even counts)."""
    return 2 if world >= 4 and world % 2 == 0 else 1


def call_layout(batch: int, world: int) -> Layout:
    """The layout of a call whose inputs hold `batch` rows."""
    groups = most_cfg_groups(world)
    if batch % groups:
        groups = 1
    return Layout(groups, world // groups)


def batch_share(value, batch: int, share: int, shares: int):
    """This share's rows of every tensor whose dim 0 is the batch (nested in dicts / lists)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.chunk(shares, dim=0)[share]
    if isinstance(value, dict):
        return {k: batch_share(v, batch, share, shares) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(batch_share(v, batch, share, shares) for v in value)
    return value


def combine(outputs: list, layout: Layout) -> torch.Tensor:
    """The whole batch's output from each sequence group's first rank, in batch order."""
    return torch.cat([outputs[group * layout.size] for group in range(layout.groups)], dim=0)
