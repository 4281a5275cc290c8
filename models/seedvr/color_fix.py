"""Colour correction of the restored video towards the (resized) input.

SeedVR's readme suggests StableSR's colour fix; both methods are re-implemented here:
- "wavelet": keep the output's high frequencies, take the low frequencies from the input
  (5 levels of a dilated 3x3 binomial blur, as in StableSR's wavelet_reconstruction);
- "adain": match each channel's mean and standard deviation to the input's.
Tensors are frames [N, C, H, W] of the same size.
"""
import torch
import torch.nn.functional as F

from ...utils.errors import InputError

METHODS = ("wavelet", "adain", "none")


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=radius)


def _low_high(x: torch.Tensor, levels: int = 5) -> tuple:
    """(low frequencies, high frequencies) of x: x == low + high."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = _blur(low, 2 ** i)
        high = high + (low - blurred)
        low = blurred
    return low, high


def wavelet_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    _, content_high = _low_high(content.float())
    style_low, _ = _low_high(style.float())
    return (content_high + style_low).to(content.dtype)


def adain_fix(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    c, s = content.float(), style.float()
    c_mean, c_std = c.mean((-2, -1), keepdim=True), c.std((-2, -1), keepdim=True) + eps
    s_mean, s_std = s.mean((-2, -1), keepdim=True), s.std((-2, -1), keepdim=True) + eps
    return ((c - c_mean) / c_std * s_std + s_mean).to(content.dtype)


def color_fix(content: torch.Tensor, style: torch.Tensor, method: str) -> torch.Tensor:
    """Apply `method` (one of METHODS)."""
    if method == "wavelet":
        return wavelet_fix(content, style)
    if method == "adain":
        return adain_fix(content, style)
    if method == "none":
        return content
    raise InputError("color_fix", f"unknown method {method!r}", ", ".join(METHODS))
