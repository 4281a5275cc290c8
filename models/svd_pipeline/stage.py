"""One pipeline stage of SVD sampling: a contiguous range of steps with ComfyUI's own sampling.

A stage runs steps [start, end) of one sigma schedule exactly the way KSamplerAdvanced does
(`sigmas[start:end + 1]`, noise added with the seed only at step 0, `add_noise` disabled
later), through ComfyUI's CFGGuider and its k-diffusion sampler functions. Two things make
the chained stages bit-identical to one KSampler run, which plain KSamplerAdvanced chaining
is not:

- the latent travels in the sampler's own space (`x` before `process_latent_out`), so the
  scale factor is not divided out and multiplied back in between stages;
- per-step noise continues where the previous stage stopped: the seeded generator's state
  travels with the latent (ancestral / SDE samplers), and Brownian-tree samplers get a tree
  over the whole schedule instead of the stage's part.

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
    """What one stage needs for one video: the schedule, its step range and the video's seed."""
    sigmas: torch.Tensor  # the whole schedule, len = steps + 1
    start: int
    end: int
    seed: int
    sampler_name: str
    cfg: float

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == len(self.sigmas) - 1

