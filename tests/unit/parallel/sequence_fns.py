"""Worker functions for the sequence-parallel tests (run inside worker processes).

Every rank builds the same full q, k, v from a seed, keeps its token shard, applies rotary
embeddings with its slice of the global table, runs Ulysses attention and gathers the result.
The caller compares with plain attention on the whole sequence in one process.
"""
import torch

from comfyui_parallel.parallel.sequence import (gather_sequence, sdpa_attention, slice_rotary, split_sequence,
                                                ulysses_attention)


def make_qkv(seed: int, batch: int, length: int, heads: int, dim: int):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, dim, generator=generator) for _ in range(3)]


def rotary_table(length: int, dim: int):
    """cos / sin of global positions, [1, L, 1, dim/2], so the sequence sits on dim 1."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
    return angles.cos().float()[None, :, None], angles.sin().float()[None, :, None]


def apply_rotary(x, cos, sin):
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def reference(seed: int, batch: int, length: int, heads: int, dim: int):
    """Single-process attention over the whole sequence (rotary on global positions)."""
    q, k, v = make_qkv(seed, batch, length, heads, dim)
    cos, sin = rotary_table(length, dim)
    return sdpa_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)


def ulysses(ctx, seed: int, batch: int, length: int, heads: int, dim: int):
    """This rank's shard through Ulysses attention; the gathered whole output and the shard."""
    q, k, v = (split_sequence(t, 1, ctx.rank, ctx.world_size) for t in make_qkv(seed, batch, length, heads, dim))
    cos, sin = (slice_rotary(t, 1, ctx.rank, ctx.world_size) for t in rotary_table(length, dim))
    local = ulysses_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, sdpa_attention,
                              ctx.group, length)
    return {"gathered": gather_sequence(local, 1, length, ctx.group), "local": local}
