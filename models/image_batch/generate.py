"""One text-to-image pipeline built from ComfyUI's own pieces, used by every batch-generator mode.

Checkpoint: `comfy.sd.load_checkpoint_guess_config` (what CheckpointLoaderSimple calls), or
`load_state_dict_guess_config` on weights already in (shared) memory. LoRA / DoRA:
`comfy.sd.load_lora_for_models`. Text: the CLIP's own tokenize / encode. Sampling:
`comfy.sample.sample`, as KSampler's `common_ksampler` does. Decoding: the VAE's `decode`.

Each image gets the noise of its own seed (`prepare_noise` on a one-image latent), so an
image does not depend on which batch or worker produced it: every mode gives the same
image for the same seed. (Ancestral / SDE samplers also draw noise during sampling from the
batch's first seed; the batches are formed before dispatch, identically in every mode.)
"""
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...parallel.replicate import DataParallel
from ..comfy import loaders, sampling
from ..comfy.management import intermediate_device
from ..comfy.patcher import weights_identity


@dataclass(frozen=True)
class GenerateSettings:
    """What every image of a job shares (also written into each PNG and manifest line)."""
    ckpt_name: str
    width: int = 64
    height: int = 64
    steps: int = 4
    cfg: float = 5.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    lora_name: str = "None"
    lora_strength: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Pipeline:
    """A loaded checkpoint (with its LoRA applied) and a cache of encoded prompts."""
    model: object  # comfy.model_patcher.ModelPatcher
    clip: object  # comfy.sd.CLIP
    vae: object  # comfy.sd.VAE
    texts: dict = field(default_factory=dict)

    def encode(self, text: str) -> list:
        """CONDITIONING for `text`, encoded once per pipeline."""
        if text not in self.texts:
            self.texts[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self.texts[text]


def load_pipeline(ckpt_path: str, lora_path: str | None = None, lora_strength: float = 1.0,
                  state_dict: dict | None = None) -> Pipeline:
    """Build the checkpoint with ComfyUI's loader (from the file, or from given weights), then the LoRA."""
    model, clip, vae = loaders.load_checkpoint(ckpt_path, state_dict)
    if clip is None or vae is None:
        raise RuntimeError(f"{ckpt_path} has no text encoder or no VAE; the batch generator needs a full checkpoint")
    if lora_path is not None:
        model, clip = loaders.apply_lora(model, clip, lora_path, lora_strength)
    return Pipeline(model, clip, vae)


def image_noise(latent: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Noise for a batch: image i gets exactly the noise of a one-image latent and seed i."""
    return torch.cat([sampling.prepare_noise(latent[:1], seed) for seed in seeds], dim=0)


def generate(pipeline: Pipeline, prompt: str, negative: str, seeds: list[int], settings: GenerateSettings,
             check_cancelled: Callable[[], None] = lambda: None) -> np.ndarray:
    """Images [B, H, W, 3] (float32 in [0, 1]) for one prompt and one seed per image."""
    positive, negative_cond = pipeline.encode(prompt), pipeline.encode(negative)
    latent = torch.zeros([len(seeds), 4, settings.height // 8, settings.width // 8],
                         device=intermediate_device())
    latent = sampling.fix_empty_latent_channels(pipeline.model, latent)
    samples = sampling.sample(pipeline.model, image_noise(latent, seeds), settings.steps, settings.cfg,
                                  settings.sampler_name, settings.scheduler, positive, negative_cond, latent,
                                  callback=lambda *_: check_cancelled(), disable_pbar=True, seed=seeds[0])
    check_cancelled()
    images = pipeline.vae.decode(samples)
    return images.detach().float().cpu().numpy()


def timed_generate(pipeline: Pipeline, prompt: str, negative: str, seeds: list[int], settings: GenerateSettings,
                   check_cancelled: Callable[[], None] = lambda: None) -> tuple[np.ndarray, float]:
    """`generate` plus the seconds per image it took."""
    start = time.perf_counter()
    images = generate(pipeline, prompt, negative, seeds, settings, check_cancelled)
    return images, (time.perf_counter() - start) / len(seeds)


class _ApplyModel(nn.Module):
    """The diffusion model's `apply_model` as a module, so DataParallel can replicate and call it."""

    def __init__(self, base_model: nn.Module):
        super().__init__()
        self.base_model = base_model

    def forward(self, x, timestep, **conditions):
        return self.base_model.apply_model(x, timestep, **conditions)


def with_data_parallel(model, devices: list[torch.device]):
    """A clone of `model` (ModelPatcher) whose every model call splits its batch over `devices`.

    The cond / uncond pair and the images of a batch are rows of one call; DataParallel cuts
    them over per-device replicas and gathers in order. Replicas take new values whenever the
    patches ComfyUI loaded change (LoRA), so they always run the weights ComfyUI patched in.
    Returns (clone, DataParallel) so the caller can close it.
    """
    parallel = DataParallel(_ApplyModel(model.model), devices, identity=lambda: weights_identity(model.model))
    clone = model.clone()

    def split_call(apply_model, args):
        return parallel(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(split_call)
    return clone, parallel
