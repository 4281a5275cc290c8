"""Ulysses sequence parallelism inside a worker's own WanModel.

Each rank of a sequence group keeps a contiguous shard of the video tokens from the first
block to the head. Only self-attention needs every token: it is replaced by
`UlyssesSelfAttention` (q, k, v of the local tokens, all-to-all to a head split, attention
over the whole sequence, all-to-all back, via parallel/sequence.py). Cross-attention (local
queries against the whole text context), the FFN, norms and modulation are per token and run
on the shard unchanged.

The tokens are cut after ComfyUI's own embedding code and joined after its head, through
forward hooks on the worker's model (a private instance, never the server's):
- block 0's pre-hook splits the token sequence; every block's pre-hook swaps in the rank's
  rows of the rotary table (global positions) and of per-token modulation (Wan 2.2 TI2V);
- the head's pre-hook splits per-token modulation, its forward hook gathers the output.
"""
import torch
from torch import nn

from ...parallel.sequence import gather_sequence, shard_range, split_sequence, ulysses_attention
from ..comfy import wan as comfy_wan
from .family import wan_blocks


class SequenceShard:
    """One rank's place in a sequence group, the current forward's global token count, and the
    real (not padding) tokens this rank computed in it, over all batch rows."""

    def __init__(self, rank: int, world: int, group):
        self.use(rank, world, group)
        self.length = self.tokens = 0
        self._rows: dict = {}

    def use(self, rank: int, world: int, group) -> None:
        """Compute the next forwards as `rank` of a `world`-rank sequence group (set per call)."""
        self.rank, self.world, self.group = rank, world, group

    def begin(self, length: int, rows: int = 1) -> None:
        """A new forward over `length` tokens of `rows` batch rows: forget the previous forward's slices."""
        self.length = length
        start, stop = shard_range(length, self.rank, self.world)
        self.tokens = rows * (stop - start)
        self._rows.clear()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return split_sequence(x, 1, self.rank, self.world)

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows (dim 1) of a whole-sequence tensor shared by every block, sliced once."""
        return self._cached(tensor, self.split)

    def per_token(self, e: torch.Tensor) -> torch.Tensor:
        """Modulation for the shard: unchanged when shared by all tokens, else this rank's token rows."""
        if e.size(1) <= 1:
            return e
        return self._cached(e, lambda t: self.split(comfy_wan.expand_modulation(t, self.length)))

    def _cached(self, tensor: torch.Tensor, make) -> torch.Tensor:
        key = id(tensor)
        if key not in self._rows:
            self._rows[key] = (tensor, make(tensor))  # the source is kept so its id is not reused
        return self._rows[key][1]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return gather_sequence(x, 1, self.length, self.group)


class UlyssesSelfAttention(nn.Module):
    """WanSelfAttention on a token shard: the same weights and math, attention over all tokens."""

    def __init__(self, inner: nn.Module, shard: SequenceShard):
        super().__init__()
        self.inner = inner
        self.shard = shard

    def forward(self, x, freqs, transformer_options={}):
        q, k, v = comfy_wan.self_attention_qkv(self.inner, x, freqs)
        attend = comfy_wan.attention_with(transformer_options)
        out = ulysses_attention(q, k, v, attend, self.shard.group, self.shard.length)
        return comfy_wan.self_attention_out(self.inner, out)


def block_pre_hook(shard: SequenceShard, first: bool):
    def hook(_module, args, kwargs):
        x = args[0]
        if first:
            shard.begin(x.shape[1], rows=x.shape[0])
            x = shard.split(x)
        rotary, modulation = comfy_wan.ROTARY_KWARG, comfy_wan.MODULATION_KWARG
        kwargs = dict(kwargs, **{rotary: shard.rows(kwargs[rotary]), modulation: shard.per_token(kwargs[modulation])})
        return (x, *args[1:]), kwargs

    return hook


def head_pre_hook(shard: SequenceShard):
    def hook(_module, args):
        x, e = args
        return x, shard.per_token(e)

    return hook


def head_post_hook(shard: SequenceShard):
    def hook(_module, _args, output):
        return shard.gather(output)

    return hook


def install_sequence_parallel(model: nn.Module, rank: int, world: int, group) -> SequenceShard:
    """Make a worker's WanModel compute on this rank's token shard (a no-op split for world 1)."""
    shard = SequenceShard(rank, world, group)
    for index, block in enumerate(wan_blocks(model)):
        block.self_attn = UlyssesSelfAttention(block.self_attn, shard)
        block.register_forward_pre_hook(block_pre_hook(shard, first=index == 0), with_kwargs=True)
    model.head.register_forward_pre_hook(head_pre_hook(shard))
    model.head.register_forward_hook(head_post_hook(shard))
    return shard
