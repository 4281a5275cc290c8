"""Worker functions for the sharding tests (run inside gloo worker processes).

Every rank builds the same small block model from a seed (Linear blocks with a [1, 6, dim]
modulation table like Wan's, and a buffer), computes the plain forward, shards the blocks with FSDP2 and
runs the forward again; the caller compares and reads the measured resident bytes.
"""
import torch
from torch import nn

from comfyui_parallel.parallel.sharding import group_mesh, resident_bytes, shard_blocks


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim)
        self.register_buffer("gain", torch.rand(dim) + 0.5)  # not sharded: stays whole on every rank

    def forward(self, x):
        return x + torch.tanh(self.fc(x)) * self.modulation[:, 0] * self.gain


class Stack(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build(seed: int, dim: int, depth: int) -> Stack:
    torch.manual_seed(seed)
    return Stack(dim, depth).eval().requires_grad_(False)


def sharded_forward(ctx, seed: int, dim: int, depth: int, shared=None, prefetch: bool = True) -> dict:
    """Plain and sharded outputs, and what this rank holds (measured) after the sharded forward."""
    model = build(seed, dim, depth)
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        plain = model(x)
    whole = resident_bytes(model.blocks)
    if shared is not None:  # the caller's copy in shared memory, as the distributed worker gets it
        model.load_state_dict(shared.open(), assign=True)
    mesh = group_mesh(ctx.device, ctx.world_size)
    adopted = shard_blocks(model, model.blocks, mesh, ctx.device, prefetch=prefetch, keep_views=shared is not None)
    viewing = shared_views(model, shared.open(), ctx) if shared is not None else []
    with torch.no_grad():  # FSDP2 keeps its gathered buffers between calls: inference tensors cannot be reused
        first = model(x)
        second = model(x)
    return {"plain": plain, "sharded": first, "again": second, "whole_block_bytes": whole,
            "resident_block_bytes": resident_bytes(model.blocks), "adopted": adopted, "viewing": viewing,
            "rest_bytes": resident_bytes([model.embed, model.head])}


def shared_views(model: Stack, full: dict, ctx) -> list[str]:
    """Block weights whose local shard lies at this rank's slice of the shared block (by address)."""
    return [name for name, param in model.named_parameters() if name.startswith("blocks.")
            and full[name].shape[0] >= ctx.world_size and param.to_local().data_ptr() == full[name].chunk(ctx.world_size)[ctx.rank].data_ptr()]
