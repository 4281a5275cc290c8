"""Ulysses sequence parallelism: one sequence's tokens split over the ranks of a group.

Each rank holds a contiguous shard of the tokens ([B, L_local, H, D]). Attention needs every
token, so before it an all-to-all turns the sequence split into a head split
([B, L_global, H/world, D]: every token, a share of the heads), attention runs on whole
sequences, and a second all-to-all turns it back. Everything outside attention (norms,
MLPs, modulation) is per token and runs on the shard unchanged.

Uneven sizes are padded: the sequence to world * ceil(L / world) (the padding sits at the
end of the global sequence, so it is cut off before attention and never attended to), the
heads to a multiple of world (zero heads, dropped after). Rotary embeddings must use global
positions: compute them for the whole sequence and take the rank's shard with
`slice_rotary` (the same split as the tokens).

torch.distributed's collectives here do not carry gradients: this is for inference.
"""
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def shard_length(length: int, world: int) -> int:
    """Tokens per rank after padding: ceil(length / world)."""
    return -(-length // world)


def shard_range(length: int, rank: int, world: int) -> tuple[int, int]:
    """The global positions [start, stop) of the real (not padding) tokens of `rank`'s shard."""
    size = shard_length(length, world)
    start = min(rank * size, length)
    return start, min(start + size, length)


def split_sequence(x: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """`rank`'s shard of `x` along `dim`, zero-padded to shard_length(x.shape[dim], world)."""
    length = x.shape[dim]
    size = shard_length(length, world)
    start, stop = shard_range(length, rank, world)
    shard = x.narrow(dim, start, stop - start)
    missing = size - (stop - start)
    if missing:
        pad_shape = list(x.shape)
        pad_shape[dim] = missing
        shard = torch.cat([shard, x.new_zeros(pad_shape)], dim=dim)
    return shard.contiguous()


def slice_rotary(freqs: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """The rotary table rows of `rank`'s tokens (global positions), split like the tokens."""
    return split_sequence(freqs, dim, rank, world)


def gather_sequence(x: torch.Tensor, dim: int, length: int, group=None) -> torch.Tensor:
    """All ranks' shards joined along `dim` and cut back to `length` (padding removed)."""
    world = dist.get_world_size(group)
    if world == 1:
        return x.narrow(dim, 0, length)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim).narrow(dim, 0, length)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain attention on [B, L, H, D] tensors (torch's scaled_dot_product_attention)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _all_to_all(send: torch.Tensor, group) -> torch.Tensor:
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received


def _sequence_to_heads(x: torch.Tensor, world: int, group) -> torch.Tensor:
    """[N, Lc, Hp, D] sequence shard -> [N, world*Lc, Hp/world, D] head shard of all tokens."""
    n, local, heads, d = x.shape
    send = x.reshape(n, local, world, heads // world, d).permute(2, 0, 1, 3, 4).contiguous()
    received = _all_to_all(send, group)  # [world (source rank = token block), N, Lc, h, D]
    return received.permute(1, 0, 2, 3, 4).reshape(n, world * local, heads // world, d)


def _heads_to_sequence(x: torch.Tensor, world: int, group) -> torch.Tensor:
    """[B, world*Lc, h, D] head shard of all tokens -> [B, Lc, world*h, D] sequence shard."""
    b, total, heads, d = x.shape
    local = total // world
    send = x.reshape(b, world, local, heads, d).permute(1, 0, 2, 3, 4).contiguous()
    received = _all_to_all(send, group)  # [world (source rank = head block), B, Lc, h, D]
    return received.permute(1, 2, 0, 3, 4).reshape(b, local, world * heads, d)


def _pad_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    missing = heads - x.shape[2]
    if not missing:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], missing, x.shape[3])], dim=2)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      attention_fn: Callable = sdpa_attention, group=None, length: int | None = None) -> torch.Tensor:
    """Attention over the whole sequence for sequence-sharded q, k, v ([B, L_local, H, D]).

    attention_fn(q, k, v) takes and returns [B, L, h, D] (whole sequences, some heads).
    length: the real global token count when the shards are padded (default: no padding).
    Returns this rank's shard of the output, [B, L_local, H, D] (padding rows are zero).
    """
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world == 1:
        return _attend_trimmed(q, k, v, attention_fn, length)
    heads = q.shape[2]
    padded_heads = shard_length(heads, world) * world
    if q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype:
        stacked = torch.cat([_pad_heads(t, padded_heads) for t in (q, k, v)], dim=0)
        full_q, full_k, full_v = _sequence_to_heads(stacked, world, group).chunk(3, dim=0)
    else:
        full_q, full_k, full_v = (_sequence_to_heads(_pad_heads(t, padded_heads), world, group) for t in (q, k, v))
    out = _attend_trimmed(full_q, full_k, full_v, attention_fn, length)
    return _heads_to_sequence(out.contiguous(), world, group)[:, :, :heads]


def _attend_trimmed(q, k, v, attention_fn: Callable, length: int | None) -> torch.Tensor:
    """Attention on the first `length` tokens; padding rows of the output are zero."""
    total = q.shape[1]
    if length is None or length >= total:
        return attention_fn(q, k, v)
    out = attention_fn(q[:, :length], k[:, :length], v[:, :length])
    return torch.cat([out, out.new_zeros(out.shape[0], total - length, *out.shape[2:])], dim=1)
