"""A small DiT-shaped transformer in plain torch for engine tests: blocks with self-attention,
cross-attention to a context and timestep modulation, called with Wan-style keyword args."""
import torch
import torch.nn.functional as F
from torch import nn


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.cross_q, self.cross_kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) * 0.1)

    def attend(self, q, k, v):
        b, n, d = q.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(b, n, d)

    def forward(self, x, e, context, transformer_options=None):
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        h = self.norm1(x) * (1 + scale) + shift
        x = x + self.proj(self.attend(*self.qkv(h).chunk(3, dim=-1)))
        k, v = self.cross_kv(context).chunk(2, dim=-1)
        x = x + self.attend(self.cross_q(self.norm2(x)), k, v)
        return x + self.ffn(self.norm3(x))


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 6, in_dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch = nn.Linear(in_dim, dim)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, in_dim)

    def forward(self, x, timestep, context, transformer_options=None):
        e = self.time(timestep.float().unsqueeze(-1))
        h = self.patch(x)
        for block in self.blocks:
            h = block(h, e=e, context=context, transformer_options=transformer_options or {})
        return self.head(h)


def example_inputs(batch: int = 4, tokens: int = 10, in_dim: int = 8, dim: int = 32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, in_dim, generator=generator)
    timestep = torch.rand(batch, generator=generator)
    context = torch.randn(batch, 5, dim, generator=generator)
    return x, timestep, context
