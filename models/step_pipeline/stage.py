"""One pipeline stage's piece of sampling: a contiguous range of steps of one sampler call.

A video's steps form one or two *segments*, each exactly one KSamplerAdvanced call: its model,
its sigma vector (`sigmas[start:end + 1]` of that model's schedule, the last sigma 0 when the
call denoises fully) and whether it adds the seed's noise. One model is one segment (KSampler);
Wan 2.2's high-noise / low-noise pair is two, as ComfyUI's templates chain them: steps 0..b
with leftover noise, then b..end with add_noise disabled, starting from the first call's output.

A stage runs a piece [start, end) of a segment through ComfyUI's CFGGuider and its
k-diffusion sampler functions. Two things make chained pieces of one segment bit-identical to
the one call, which plain KSamplerAdvanced chaining is not:

- the latent travels in the sampler's own space (`x` before `process_latent_out`), so the
  scale factor is not divided out and multiplied back in between pieces;
- per-step noise continues where the previous piece stopped: the seeded generator's state
  travels with the latent (ancestral / SDE samplers), and Brownian-tree samplers get a tree
  over the segment's whole sigma vector instead of the piece's part.

At a segment boundary the stage does what the second KSamplerAdvanced does: the first call's
output (out of the sampler's space, `process_latent_out`) is its latent_image, its noise is
zeros, its per-step noise starts afresh from the seed.

Samplers with history across steps (multistep: dpmpp_2m, lms, uni_pc, ...) or with a schedule
of their own (dpm_fast, dpm_adaptive) cannot be split exactly and are refused.
"""
from dataclasses import dataclass

import torch

from ...utils.errors import InputError
from ..comfy.sampling import BROWNIAN_NOISE_SAMPLERS, GENERATOR_NOISE_SAMPLERS, STATELESS_SAMPLERS

SPLITTABLE_SAMPLERS = STATELESS_SAMPLERS + GENERATOR_NOISE_SAMPLERS + BROWNIAN_NOISE_SAMPLERS


def check_splittable(sampler_name: str) -> None:
    """Refuse a sampler whose state across steps cannot be carried from stage to stage."""
    if sampler_name not in SPLITTABLE_SAMPLERS:
        raise InputError("sampler_name", f"'{sampler_name}' keeps history across steps or its own schedule, so "
                         "splitting its steps over stages would change the result", ", ".join(SPLITTABLE_SAMPLERS))


@dataclass
class StageJob:
    """What one stage runs for one video: a piece [start, end) of one segment's sigma vector."""
    sigmas: torch.Tensor  # the segment's sigma vector (its sampler call's), len = its steps + 1
    start: int
    end: int
    seed: int
    sampler_name: str
    cfg: float
    add_noise: bool = True  # the segment starts from the seed's noise (else zeros, as add_noise disable)

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == len(self.sigmas) - 1


@dataclass
class Segment:
    """One sampler call of a video: model index, global steps [start, end), sigma vector, add_noise."""
    model: int
    start: int
    end: int
    sigmas: torch.Tensor
    add_noise: bool


def pieces(segments: list[Segment], start: int, end: int) -> list[tuple[int, int, int]]:
    """The global step range [start, end) as (segment index, start, end) pieces, relative to each segment."""
    out = []
    for index, segment in enumerate(segments):
        a, b = max(start, segment.start), min(end, segment.end)
        if a < b:
            out.append((index, a - segment.start, b - segment.start))
    return out


def piece_jobs(segments: list[Segment], piece_list, seed: int, sampler_name: str, cfg: float) -> list[StageJob]:
    """The StageJobs of one video for these pieces."""
    return [StageJob(segments[index].sigmas, a, b, seed, sampler_name, cfg, segments[index].add_noise)
            for index, a, b in piece_list]
