"""Frame preparation for SeedVR: area resize, crop to multiples of 16, 4n+1 padding, chunking.

Follows the reference inference scripts: NaResize to the area res_h * res_w keeping the aspect
ratio (bicubic, antialiased; small inputs are upscaled), clamp to [0, 1], centre crop to
multiples of 16 (torchvision's rounding), normalise to [-1, 1]; frame counts are padded with the last frame to 4n+1.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...utils.errors import InputError


def area_size(height: int, width: int, res_h: int, res_w: int) -> tuple:
    """(h, w) with area res_h * res_w and the input's aspect ratio, cropped to multiples of 16."""
    scale = math.sqrt((res_h * res_w) / (height * width))
    h, w = round(height * scale), round(width * scale)
    h16, w16 = h // 16 * 16, w // 16 * 16
    if h16 < 16 or w16 < 16:
        raise InputError("res_h", f"target area {res_h}x{res_w} gives {h}x{w} pixels for a "
                         f"{height}x{width} input, smaller than 16 on one side",
                         "a larger res_h / res_w (each side must reach at least 16 pixels)")
    return h, w


def preprocess(images: torch.Tensor, res_h: int, res_w: int) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, 3] in [0, 1] -> [N, 3, h16, w16] in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError("images", f"shape {tuple(images.shape)} is not a batch of RGB frames",
                         "IMAGE [frames, height, width, 3]")
    if images.shape[0] == 0:
        raise InputError("images", "no frames", "at least 1 frame")
    frames = images.permute(0, 3, 1, 2).float()
    h, w = area_size(frames.shape[2], frames.shape[3], res_h, res_w)
    if (h, w) != tuple(frames.shape[2:]):
        frames = F.interpolate(frames, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    frames = frames.clamp(0, 1)
    h16, w16 = h // 16 * 16, w // 16 * 16
    top, left = crop_offsets(h, w)
    return frames[:, :, top:top + h16, left:left + w16] * 2 - 1


def crop_offsets(height: int, width: int) -> tuple:
    """(top, left) of the centre crop to multiples of 16, as torchvision's `center_crop`:
    int(round(excess / 2)), halves to even (831 rows -> 816: top 8, not 7)."""
    return int(round((height - height // 16 * 16) / 2)), int(round((width - width // 16 * 16) / 2))


def padded_length(frames: int) -> int:
    """Frames the VAE takes: 1 stays 1, 2..4 become 5, otherwise the next 4n+1."""
    if frames == 1:
        return 1
    return max(5, 4 * math.ceil((frames - 1) / 4) + 1)


def pad_frames(video: torch.Tensor) -> torch.Tensor:
    """Repeat the last frame of [N, ...] up to padded_length(N)."""
    missing = padded_length(video.shape[0]) - video.shape[0]
    if not missing:
        return video
    return torch.cat((video, video[-1:].expand(missing, *video.shape[1:])), dim=0)


@dataclass(frozen=True)
class Chunk:
    """Frames [start, stop) of the input, processed together."""

    start: int
    stop: int


def check_chunking(batch_size: int, overlap: int) -> None:
    if batch_size < 1 or batch_size % 4 != 1:
        raise InputError("batch_size", f"{batch_size} frames per chunk cannot be encoded by the causal VAE",
                         "4n+1 frames: 1, 5, 9, 13, 17, 21, ...")
    if not 0 <= overlap < batch_size:
        raise InputError("temporal_overlap", f"{overlap} frames for chunks of {batch_size}",
                         f"0..{batch_size - 1}")


def make_chunks(frames: int, batch_size: int, overlap: int) -> list:
    """Chunks of batch_size frames, consecutive chunks sharing `overlap` frames."""
    check_chunking(batch_size, overlap)
    if frames <= batch_size:
        return [Chunk(0, frames)]
    step = batch_size - overlap
    chunks = []
    start = 0
    while True:
        stop = min(start + batch_size, frames)
        chunks.append(Chunk(start, stop))
        if stop == frames:
            return chunks
        start += step


def blend_chunks(parts: list, chunks: list, frames: int) -> torch.Tensor:
    """Join per-chunk outputs [n, ...]: overlapping frames are cross-faded linearly."""
    shape = parts[0].shape[1:]
    out = torch.zeros((frames, *shape), dtype=torch.float32)
    weight = torch.zeros(frames, dtype=torch.float32)
    for i, (part, chunk) in enumerate(zip(parts, chunks)):
        n = chunk.stop - chunk.start
        w = torch.ones(n)
        if i > 0:
            ov = chunks[i - 1].stop - chunk.start
            if ov > 0:
                w[:ov] = torch.linspace(0, 1, ov + 2)[1:-1]
        if i + 1 < len(chunks):
            ov = chunk.stop - chunks[i + 1].start
            if ov > 0:
                w[n - ov:] = torch.minimum(w[n - ov:], torch.linspace(1, 0, ov + 2)[1:-1])
        out[chunk.start:chunk.stop] += part[:n].float() * w.view(-1, *([1] * len(shape)))
        weight[chunk.start:chunk.stop] += w
    return out / weight.view(-1, *([1] * len(shape)))
