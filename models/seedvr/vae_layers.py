"""Layers of SeedVR's causal 3D VAE (models/video_vae_v3 in the reference).

Causality: a conv's temporal padding p_t is taken out of the conv and replaced by 2 * p_t copies
of the first frame in front (no future frames are ever read). A `CausalConv3d` can also keep the
last frames of its input as memory, so a video can be processed in temporal chunks with the
same result as one pass. GroupNorm and attention run per frame.
"""
import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Conv3d):
    """Conv3d with causal temporal padding and optional memory across temporal chunks."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
        self.temporal_padding = self.padding[0]
        self.padding = (0, *self.padding[1:])
        self.memory = None

    def forward(self, x: torch.Tensor, chunked: bool = False) -> torch.Tensor:
        """x [B, C, T, H, W]. chunked: prepend the previous chunk's memory (if any) and keep new memory."""
        if chunked and self.memory is not None:
            x = torch.cat((self.memory.to(x), x), dim=2)
        elif self.temporal_padding:
            x = torch.cat((x[:, :, :1].expand(-1, -1, 2 * self.temporal_padding, -1, -1), x), dim=2)
        if chunked:
            keep = self.kernel_size[0] - self.stride[0]
            self.memory = x[:, :, x.shape[2] - keep:].detach() if keep > 0 else None
        return super().forward(x)


def reset_memory(module: nn.Module) -> None:
    """Forget all causal-conv memories (start of a new video)."""
    for m in module.modules():
        if isinstance(m, CausalConv3d):
            m.memory = None


def frame_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm applied to each frame separately: [B, C, T, H, W]."""
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    return norm(frames).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class ResnetBlock3D(nn.Module):
    """GroupNorm -> SiLU -> causal 3x3x3 conv, twice, plus a (1x1x1) shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = CausalConv3d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv2 = CausalConv3d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, chunked=False):
        h = self.conv1(F.silu(frame_norm(self.norm1, x)), chunked)
        h = self.conv2(F.silu(frame_norm(self.norm2, h)), chunked)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x, chunked)
        return x + h


class Downsample3D(nn.Module):
    """Stride-2 causal conv: spatial (1x3x3) or spatio-temporal (3x3x3), right/bottom zero pad."""

    def __init__(self, ch: int, temporal: bool):
        super().__init__()
        kernel = (3 if temporal else 1, 3, 3)
        stride = (2 if temporal else 1, 2, 2)
        self.conv = CausalConv3d(ch, ch, kernel, stride=stride, padding=(1 if temporal else 0, 0, 0))

    def forward(self, x, chunked=False):
        return self.conv(F.pad(x, (0, 1, 0, 1)), chunked)


class Upsample3D(nn.Module):
    """1x1x1 conv to c * (2 * 2 * r_t) channels, depth-to-space (x y z c), drop the duplicate
    first frame when upsampling time (first chunk only), then a causal 3x3x3 conv."""

    def __init__(self, ch: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.ratio_t = 2 if temporal else 1
        self.conv = CausalConv3d(ch, ch, 3, padding=1)
        self.upscale_conv = nn.Conv3d(ch, ch * 4 * self.ratio_t, 1)

    def forward(self, x, chunked=False, first_chunk=True):
        b, c, t, h, w = x.shape
        x = self.upscale_conv(x).reshape(b, 2, 2, self.ratio_t, c, t, h, w)
        x = x.permute(0, 4, 5, 3, 6, 1, 7, 2).reshape(b, c, t * self.ratio_t, h * 2, w * 2)
        if self.temporal and first_chunk:
            x = torch.cat((x[:, :, :1], x[:, :, 2:]), dim=2)
        return self.conv(x, chunked)


class FrameAttention(nn.Module):
    """Single-head spatial self-attention per frame (diffusers `Attention`, GroupNorm, residual)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x):
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        seq = self.group_norm(frames).flatten(2).transpose(1, 2)
        q, k, v = self.to_q(seq), self.to_k(seq), self.to_v(seq)
        attn = torch.softmax((q.float() @ k.float().transpose(1, 2)) / c ** 0.5, dim=-1).to(v.dtype)
        out = self.to_out[0](attn @ v).transpose(1, 2).reshape(b * t, c, h, w) + frames
        return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class MidBlock3D(nn.Module):
    """resnet -> per-frame attention -> resnet (attentions registered first, as in diffusers)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([FrameAttention(ch, groups)])
        self.resnets = nn.ModuleList([ResnetBlock3D(ch, ch, groups), ResnetBlock3D(ch, ch, groups)])

    def forward(self, x, chunked=False):
        x = self.resnets[0](x, chunked)
        x = self.attentions[0](x)
        return self.resnets[1](x, chunked)


class DownBlock3D(nn.Module):
    def __init__(self, in_ch, out_ch, layers, groups, downsample: bool, temporal: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample3D(out_ch, temporal)]) if downsample else None

    def forward(self, x, chunked=False):
        for resnet in self.resnets:
            x = resnet(x, chunked)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, chunked)
        return x


class UpBlock3D(nn.Module):
    def __init__(self, in_ch, out_ch, layers, groups, upsample: bool, temporal: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample3D(out_ch, temporal)]) if upsample else None

    def forward(self, x, chunked=False, first_chunk=True):
        for resnet in self.resnets:
            x = resnet(x, chunked)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, chunked, first_chunk)
        return x
