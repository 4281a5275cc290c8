"""SeedVR's causal video VAE: encoder / decoder with the official key layout, temporal chunking
with causal memory, and optional spatial tiling (blended overlaps) to bound memory.

Frames: T = 4n + 1 pixel frames <-> n + 1 latent frames. Latents leave `encode` already scaled
(x 0.9152, shift 0) as the reference runner does; `decode` undoes that.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.errors import InputError
from .config import VAEConfig
from .vae_layers import CausalConv3d, DownBlock3D, MidBlock3D, UpBlock3D, frame_norm, reset_memory


class Encoder3D(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups, n = cfg.block_out_channels, cfg.norm_groups, len(cfg.block_out_channels)
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock3D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups,
                        downsample=i < n - 1, temporal=i >= n - cfg.temporal_scale_num - 1)
            for i in range(n))
        self.mid_block = MidBlock3D(ch[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x, chunked=False):
        x = self.conv_in(x, chunked)
        for block in self.down_blocks:
            x = block(x, chunked)
        x = self.mid_block(x, chunked)
        return self.conv_out(F.silu(frame_norm(self.conv_norm_out, x)), chunked)


class Decoder3D(nn.Module):
    """Registration order (conv_in, up_blocks, mid_block, ...) matches the checkpoint's key order."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        rev, groups, n = cfg.block_out_channels[::-1], cfg.norm_groups, len(cfg.block_out_channels)
        self.conv_in = CausalConv3d(cfg.latent_channels, rev[0], 3, padding=1)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, groups,
                      upsample=i < n - 1, temporal=i < cfg.temporal_scale_num)
            for i in range(n))
        self.mid_block = MidBlock3D(rev[0], groups)
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=1e-6)
        self.conv_out = CausalConv3d(rev[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z, chunked=False, first_chunk=True):
        x = self.mid_block(self.conv_in(z, chunked), chunked)
        for block in self.up_blocks:
            x = block(x, chunked, first_chunk)
        return self.conv_out(F.silu(frame_norm(self.conv_norm_out, x)), chunked)


@dataclass
class TileConfig:
    """Spatial tiling in pixels (0 = off). Latent tiles are tile_size // 8 with overlap // 8."""

    tile_size: int = 0
    overlap: int = 64


def _axis_tiles(length: int, tile: int, overlap: int) -> list:
    """(start, size, overlap with previous tile, overlap with next tile) along one axis."""
    if tile <= 0 or length <= tile:
        return [(0, length, 0, 0)]
    step = max(tile - overlap, 1)
    starts = list(range(0, length - tile, step)) + [length - tile]
    tiles = []
    for i, s in enumerate(starts):
        before = starts[i - 1] + tile - s if i else 0
        after = s + tile - starts[i + 1] if i + 1 < len(starts) else 0
        tiles.append((s, tile, before, after))
    return tiles


def _ramp(n: int, before: int, after: int, device) -> torch.Tensor:
    """1 inside, linear ramps (never 0) over the overlaps at both ends."""
    m = torch.ones(n, device=device)
    if before:
        m[:before] = torch.linspace(0, 1, before + 2, device=device)[1:-1]
    if after:
        m[n - after:] = torch.minimum(m[n - after:], torch.linspace(1, 0, after + 2, device=device)[1:-1])
    return m


def tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale: float) -> torch.Tensor:
    """Apply fn to overlapping spatial tiles of x [B, C, T, H, W] and blend them with linear ramps;
    fn's output is `scale` times its input's spatial size. Without tiling: fn(x)."""
    h, w = x.shape[-2:]
    rows, cols = _axis_tiles(h, tile, overlap), _axis_tiles(w, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return fn(x)
    sc = lambda v: int(round(v * scale))
    out = weight = None
    for y, th, top, bottom in rows:
        for x0, tw, left, right in cols:
            part = fn(x[..., y:y + th, x0:x0 + tw])
            if out is None:
                out = torch.zeros((*part.shape[:3], sc(h), sc(w)), dtype=torch.float32, device=part.device)
                weight = torch.zeros((sc(h), sc(w)), dtype=torch.float32, device=part.device)
            ph, pw = part.shape[-2:]
            mask = _ramp(ph, sc(top), sc(bottom), part.device)[:, None] * _ramp(pw, sc(left), sc(right), part.device)[None]
            out[..., sc(y):sc(y) + ph, sc(x0):sc(x0) + pw] += part.float() * mask
            weight[sc(y):sc(y) + ph, sc(x0):sc(x0) + pw] += mask
    return (out / weight).to(part.dtype)


class VideoVAE(nn.Module):
    """The VAE. encode: [B, 3, 4n+1, H, W] in [-1, 1] -> scaled latent [B, 16, n+1, H/8, W/8]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3D(cfg)
        self.decoder = Decoder3D(cfg)
        self.tiles = TileConfig()
        self.chunk_frames = 4

    def _check_frames(self, frames: int, input_name: str) -> None:
        tf = self.cfg.temporal_factor
        if frames % tf != 1:
            raise InputError(input_name, f"{frames} frames cannot be encoded by the causal VAE",
                             f"{tf}n+1 frames (1, {tf + 1}, {2 * tf + 1}, ...); the upscaler pads for you")

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Causal chunks of 1 + chunk_frames then chunk_frames frames (reference slicing)."""
        reset_memory(self.encoder)
        size = self.chunk_frames
        if x.shape[2] <= 1 + size:
            return self.encoder(x)
        parts = [x[:, :, : 1 + size]] + list(x[:, :, 1 + size:].split(size, dim=2))
        out = [self.encoder(p, chunked=True) for p in parts]
        reset_memory(self.encoder)
        return torch.cat(out, dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """Causal latent chunks of 1 + 1 then 1 frame (reference slicing)."""
        reset_memory(self.decoder)
        size = max(self.chunk_frames // self.cfg.temporal_factor, 1)
        if z.shape[2] <= 1 + size:
            return self.decoder(z)
        parts = [z[:, :, : 1 + size]] + list(z[:, :, 1 + size:].split(size, dim=2))
        out = [self.decoder(p, chunked=True, first_chunk=i == 0) for i, p in enumerate(parts)]
        reset_memory(self.decoder)
        return torch.cat(out, dim=2)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """Posterior sample (the reference encodes with use_sample=True) or mean, scaled."""
        self._check_frames(x.shape[2], "images")
        x = x.to(self.encoder.conv_in.weight.dtype)
        sf = self.cfg.spatial_factor
        moments = tiled(self._encode_moments, x, self.tiles.tile_size, self.tiles.overlap, 1 / sf)
        mean, logvar = moments.float().chunk(2, dim=1)
        latent = mean
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
            latent = mean + std * noise
        return (latent - self.cfg.shifting_factor) * self.cfg.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, 16, n+1, h, w] -> video [B, 3, 4n+1, 8h, 8w] (float32)."""
        z = (latent.float() / self.cfg.scaling_factor + self.cfg.shifting_factor)
        z = z.to(self.decoder.conv_in.weight.dtype)
        sf = self.cfg.spatial_factor
        tile = self.tiles.tile_size // sf
        out = tiled(self._decode_frames, z, tile, self.tiles.overlap // sf, sf)
        return out.float()
