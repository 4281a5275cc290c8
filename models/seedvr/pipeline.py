"""The SeedVR upscale pipeline on one device: encode, condition, sample, decode, colour fix.

Phases run over all chunks in turn so each model moves at most twice per run: the VAE encodes
every chunk, then the DiT samples every chunk (the VAE waits in host memory, the DiT's blocks
swap when `blocks_to_swap` > 0), then the VAE decodes every chunk. Chunks are independent (each
draws its noise from its own seed), so `process_chunks` runs any subset of them: all on one
device (`upscale`), or a share per device in the multi-GPU workers (multi_gpu_server.py).
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from ...offload.swap import OffloadConfig, enable_offload
from ...utils.errors import InputError
from .color_fix import METHODS, color_fix
from .config import SamplerConfig
from .dit import NaDiT
from .frames import blend_chunks, check_chunking, make_chunks, pad_frames, preprocess
from .sampling import cfg_combine, euler_sample, sampling_timesteps, sr_condition
from .vae import VideoVAE


@dataclass
class SeedVRModel:
    """A loaded SeedVR: DiT + VAE, where they compute, and how the DiT is offloaded."""

    dit: NaDiT
    vae: VideoVAE
    variant: str
    sampler: SamplerConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    blocks_to_swap: int = 0
    embeddings: dict = field(default_factory=dict)  # baked into the checkpoint: {"positive": ..., "negative": ...}
    # how the DiT / VAE leave a GPU after their phase: None moves them to offload_device (a host
    # copy); the multi-GPU workers point them back at the shared host weights instead (no copy)
    release: Callable[[torch.nn.Module], None] | None = None

    def leave_device(self, module: torch.nn.Module) -> None:
        """After a phase on a GPU: free the module's device memory, its weights on the host."""
        if self.device.type == "cpu":
            return
        if self.release is None:
            module.to(self.offload_device)
        else:
            self.release(module)
        torch.cuda.empty_cache()


@dataclass
class UpscaleSettings:
    """The SeedVRUpscaler inputs (cond_noise_scale None = the variant's default)."""

    res_h: int = 720
    res_w: int = 1280
    cfg_scale: float = 6.5
    sample_steps: int = 50
    seed: int = 666
    batch_size: int = 5
    temporal_overlap: int = 0
    color_fix: str = "wavelet"
    cond_noise_scale: float | None = None

    def check(self) -> None:
        check_chunking(self.batch_size, self.temporal_overlap)
        if self.sample_steps < 1:
            raise InputError("sample_steps", f"{self.sample_steps}", "1 or more (SeedVR2: 1, SeedVR: 50)")
        if self.color_fix not in METHODS:
            raise InputError("color_fix", f"unknown method {self.color_fix!r}", ", ".join(METHODS))


@dataclass
class Hooks:
    """Progress (done, total) and cancellation (raises) callbacks from the caller."""

    progress: Callable[[int, int], None] = lambda done, total: None
    check_cancel: Callable[[], None] = lambda: None


def check_embedding(emb: torch.Tensor | None, model: SeedVRModel, input_name: str) -> torch.Tensor:
    """A text embedding [tokens, width] whose width the DiT's txt_in takes; without one given,
    the checkpoint's own (Comfy-Org's repackaged files carry positive / negative conditioning)."""
    if emb is None:
        emb = model.embeddings.get(input_name)
    if emb is None:
        raise InputError(input_name, "no text embedding was given and the checkpoint carries none",
                         "CONDITIONING from LoadConditioningFile (e.g. the official pos_emb.pt / neg_emb.pt)")
    if emb.ndim == 3 and emb.shape[0] == 1:
        emb = emb[0]
    width = model.dit.cfg.txt_in_dim
    if emb.ndim != 2 or emb.shape[-1] != width or emb.shape[0] == 0:
        raise InputError(input_name, f"embedding of shape {tuple(emb.shape)} does not fit this DiT",
                         f"[tokens, {width}] (SeedVR's text embeddings are {width} wide)")
    return emb


@contextmanager
def dit_on_device(model: SeedVRModel):
    """DiT on the compute device for the sampling phase, with block swap when asked; back after."""
    dit, device = model.dit, model.device
    blocks = dit.blocks
    for name, child in dit.named_children():
        if name != "blocks":
            child.to(device)
    config = OffloadConfig(blocks_to_swap=model.blocks_to_swap, compute_device=device,
                           offload_device=model.offload_device)
    offloader = enable_offload(blocks, config)
    try:
        yield offloader
    finally:
        offloader.disable()
        model.leave_device(dit)


@contextmanager
def vae_on_device(model: SeedVRModel):
    model.vae.to(model.device)
    try:
        yield model.vae
    finally:
        model.leave_device(model.vae)


def chunk_generator(seed: int, index: int) -> torch.Generator:
    """The generator of chunk `index` (seed + index): a chunk's noise depends neither on how many
    chunks there are nor on which device runs it. It draws, in the reference's order, the
    posterior sample, the noise, the conditioning-augmentation noise."""
    return torch.Generator().manual_seed((seed + index) % 2 ** 64)


def _encode_chunks(model, clips, generators, hooks) -> list:
    latents = []
    with vae_on_device(model) as vae, torch.no_grad():
        for clip, generator in zip(clips, generators):
            hooks.check_cancel()
            pixels = pad_frames(clip).permute(1, 0, 2, 3)[None].to(model.device)
            latent = vae.encode(pixels, generator=generator)
            latents.append(latent[0].permute(1, 2, 3, 0).cpu())
    return latents


def _sample_chunks(model, latents, pos, neg, settings, generators, hooks) -> list:
    steps, cfg = settings.sample_steps, settings.cfg_scale
    noise_scale = settings.cond_noise_scale
    if noise_scale is None:
        noise_scale = model.sampler.cond_noise_scale
    calls = len(sampling_timesteps(steps))
    total = calls * len(latents)
    results = []
    with dit_on_device(model), torch.no_grad():
        device = model.device
        pos, neg = pos.to(device), (neg.to(device) if cfg != 1.0 else None)
        for index, (latent, generator) in enumerate(zip(latents, generators)):
            noise = torch.randn(latent.shape, generator=generator)
            cond = sr_condition(latent, torch.randn(latent.shape, generator=generator), noise_scale).to(device)

            def velocity(x_t, t):
                hooks.check_cancel()
                vid = torch.cat((x_t, cond), dim=-1)
                v_pos = model.dit(vid, pos, t)
                v_neg = model.dit(vid, neg, t) if neg is not None else None
                return cfg_combine(v_pos.float(), None if v_neg is None else v_neg.float(), cfg)

            on_step = lambda done, _n, i=index: hooks.progress(i * calls + done, total)
            results.append(euler_sample(noise.to(device), velocity, steps, on_step).cpu())
    return results


def _decode_chunks(model, samples, clips, settings, hooks) -> list:
    parts = []
    with vae_on_device(model) as vae, torch.no_grad():
        for sample, clip in zip(samples, clips):
            hooks.check_cancel()
            decoded = vae.decode(sample.permute(3, 0, 1, 2)[None].to(model.device))[0].cpu()
            frames = decoded.permute(1, 0, 2, 3)[:clip.shape[0]]
            parts.append(color_fix(frames, clip, settings.color_fix).clamp(-1, 1))
    return parts


@dataclass
class Prepared:
    """The checked inputs of one upscale: frames at the target size [N, 3, h, w] in [-1, 1],
    their chunks, and the text embeddings."""

    video: torch.Tensor
    chunks: list
    pos: torch.Tensor
    neg: torch.Tensor | None

    def clips(self, indices) -> list:
        return [self.video[self.chunks[i].start:self.chunks[i].stop] for i in indices]


def prepare(model: SeedVRModel, images: torch.Tensor, pos: torch.Tensor | None, neg: torch.Tensor | None,
            settings: UpscaleSettings) -> Prepared:
    settings.check()
    pos = check_embedding(pos, model, "positive")
    neg = check_embedding(neg, model, "negative") if settings.cfg_scale != 1.0 else None
    video = preprocess(images, settings.res_h, settings.res_w)
    return Prepared(video, make_chunks(video.shape[0], settings.batch_size, settings.temporal_overlap), pos, neg)


def process_chunks(model: SeedVRModel, clips: list, indices: list, pos, neg, settings: UpscaleSettings,
                   hooks: Hooks = Hooks()) -> list:
    """Restore the chunks `indices` (their frames `clips`): decoded, colour-fixed frames in [-1, 1]."""
    generators = [chunk_generator(settings.seed, i) for i in indices]
    latents = _encode_chunks(model, clips, generators, hooks)
    samples = _sample_chunks(model, latents, pos, neg, settings, generators, hooks)
    return _decode_chunks(model, samples, clips, settings, hooks)


def merge(parts: list, prepared: Prepared) -> torch.Tensor:
    """Per-chunk outputs -> IMAGE [N, h, w, 3] in [0, 1], overlaps cross-faded."""
    out = blend_chunks(parts, prepared.chunks, prepared.video.shape[0])
    return (out * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def upscale(model: SeedVRModel, images: torch.Tensor, pos: torch.Tensor | None, neg: torch.Tensor | None,
            settings: UpscaleSettings, hooks: Hooks = Hooks()) -> torch.Tensor:
    """IMAGE frames [N, H, W, 3] in [0, 1] -> restored frames [N, h, w, 3] at the target area
    (h, w multiples of 16). `neg` is only needed when cfg_scale != 1; either may be None when the
    checkpoint carries its own embeddings."""
    prepared = prepare(model, images, pos, neg, settings)
    indices = list(range(len(prepared.chunks)))
    parts = process_chunks(model, prepared.clips(indices), indices, prepared.pos, prepared.neg, settings, hooks)
    return merge(parts, prepared)
