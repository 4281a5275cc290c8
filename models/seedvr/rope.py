"""Rotary position embeddings of the two NaDiT code trees, computed per attention window.

Both follow rotary-embedding-torch's layout: per axis, each frequency covers an interleaved
pair of dims; axes (t, h, w) are concatenated; the rotated dims come first and the rest of the
head passes through unchanged. The frequency vector is kept as the persistent buffer
`rope.freqs` because the official checkpoints store it (`blocks.N.attn.rope.rope.freqs`).
"""
import math

import torch
from torch import nn


def rotate_interleaved(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (0,1), (2,3), ... of the first angles.shape[-1] dims of x by `angles`.

    x: [..., L, heads, D] (any leading batch of windows); angles: [L, R] with R even (each angle repeated for its pair).
    Computed in float32 as the reference does, returned in x's dtype.
    """
    rot = angles.shape[-1]
    head, tail = x[..., :rot].float(), x[..., rot:]
    pairs = head.unflatten(-1, (-1, 2))
    rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    out = head * cos + rotated_half * sin
    return torch.cat((out.to(x.dtype), tail), dim=-1)


class _Freqs(nn.Module):
    """Holds the `freqs` buffer under the name the checkpoints use (`rope.rope.freqs`)."""

    def __init__(self, freqs: torch.Tensor):
        super().__init__()
        self.register_buffer("freqs", freqs)


def _axis_angles(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """[n] positions x [F] freqs -> [n, 2F] angles, each repeated for its interleaved pair."""
    return (positions[:, None].float() * freqs[None, :].float()).repeat_interleave(2, dim=-1)


def _grid_angles(t_pos, h_pos, w_pos, freqs) -> torch.Tensor:
    """Angles for every (t, h, w) of a window in (t h w) order: [t*h*w, 3 * 2F]."""
    at, ah, aw = (_axis_angles(p, freqs) for p in (t_pos, h_pos, w_pos))
    nt, nh, nw = len(t_pos), len(h_pos), len(w_pos)
    return torch.cat((
        at[:, None, None, :].expand(nt, nh, nw, -1),
        ah[None, :, None, :].expand(nt, nh, nw, -1),
        aw[None, None, :, :].expand(nt, nh, nw, -1),
    ), dim=-1).reshape(nt * nh * nw, -1)


class MMRope3d(nn.Module):
    """3B (dit_v2 `NaMMRotaryEmbedding3d`): LM-style frequencies, theta 10000, on video and text.

    Video token (t, h, w) of a window gets positions (t + text_len, h, w), counted from the
    window's corner; text token i gets position i on all three axes.
    """

    mm = True

    def __init__(self, axis_dim: int):
        super().__init__()
        exponents = torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim
        self.rope = _Freqs(1.0 / (10000 ** exponents))

    def video_angles(self, shape: tuple, text_len: int) -> torch.Tensor:
        t, h, w = shape
        freqs = self.rope.freqs
        dev = freqs.device
        return _grid_angles(torch.arange(t, device=dev) + text_len, torch.arange(h, device=dev),
                            torch.arange(w, device=dev), freqs)

    def text_angles(self, text_len: int) -> torch.Tensor:
        axis = _axis_angles(torch.arange(text_len, device=self.rope.freqs.device), self.rope.freqs)
        return axis.repeat(1, 3)


class PixelRope3d(nn.Module):
    """7B (dit `NaRotaryEmbedding3d`): pixel frequencies linspace(1, 128, F) * pi on video only.

    Positions along each axis are linspace(-1, 1, n) over the window's extent.
    """

    mm = False

    def __init__(self, axis_dim: int, max_freq: float = 256.0):
        super().__init__()
        self.rope = _Freqs(torch.linspace(1.0, max_freq / 2, axis_dim // 2) * math.pi)

    def video_angles(self, shape: tuple, text_len: int) -> torch.Tensor:
        dev = self.rope.freqs.device
        t, h, w = (torch.linspace(-1, 1, n, device=dev) for n in shape)
        return _grid_angles(t, h, w, self.rope.freqs)
