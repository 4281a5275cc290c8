"""The step pipeline's caller side: share the model, start the stages, collect videos and the report.

Runs in ComfyUI's server (or a test): the model's weights, with its weight patches (LoRA)
applied, go once into shared memory, its CFG patch goes as plain data (patches.py), one
worker per device (a WorkerGroup kept in the pack's pool between prompts) rebuilds ComfyUI's
model and runs its stage of the steps (worker.py). Progress counts every video's
every step over all stages; ComfyUI's cancel stops all stages. After a cancel or a failure the
group is closed (its channels may hold half-sent latents) and the next prompt starts a new one.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...parallel.devices import storage_device
from ...parallel.launch import WorkerGroupConfig
from ...parallel.pipeline import PipelineReport, StageStats, split_steps
from ...parallel.pool import POOL
from ...utils.errors import Cancelled
from ..comfy.rebuild import model_spec
from ..comfy.sampling import schedule_sigmas
from ..comfy.weights import patched_state_dict
from .patches import describe_patches, weights_key
from .stage import check_splittable

WORKER_FN = "models.svd_pipeline.worker:run"
FEATURE = "svd_pipeline"


@dataclass
class PipelineSettings:
    """One SVDStepPipelineSampler call, as plain values."""
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    num_videos: int
    stage_split: str = "even"


@dataclass
class PipelineResult:
    samples: torch.Tensor  # num_videos × frames, seed order
    report: PipelineReport
    step_seconds: list[float]  # measured mean seconds per step (for balanced splits)


def pool_key(devices: list[torch.device], comfyui_dir) -> tuple:
    """The pool key of the stage workers for these devices and this ComfyUI."""
    names = tuple(str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices)
    return (FEATURE, names, str(comfyui_dir))


def stage_ranges(steps: int, stages: int, split: str, measured: list[float] | None) -> list[tuple[int, int]]:
    """Even ranges, or balanced by measured per-step seconds when a run with these settings measured them."""
    if split == "balanced" and measured is not None and len(measured) == steps:
        return split_steps(steps, stages, measured)
    return split_steps(steps, stages)


def run_pipeline(model, positive, negative, latent: torch.Tensor, settings: PipelineSettings,
                 devices: list[torch.device], comfyui_dir: str | Path, measured: list[float] | None = None,
                 on_progress=None, should_cancel=None) -> PipelineResult:
    """Sample settings.num_videos videos (seeds seed … seed+n−1) through len(devices) stages."""
    check_splittable(settings.sampler_name)
    guidance = describe_patches(model)
    sigmas = schedule_sigmas(model, settings.steps, settings.sampler_name, settings.scheduler)
    ranges = stage_ranges(len(sigmas) - 1, len(devices), settings.stage_split, measured)
    key = pool_key(devices, comfyui_dir)
    for other in POOL.keys(FEATURE):  # one shared model at a time; other stage counts keep their workers
        if other != key:
            POOL.drop_weights(other, FEATURE)
    group = POOL.group(key, WorkerGroupConfig(devices=list(key[1]), comfyui_dir=key[2]))
    weights = POOL.shared(key, FEATURE, weights_key(model), lambda: patched_state_dict(model))
    job = {"spec": model_spec(model), "weights": weights, "guidance": guidance, "model_key": weights.spec()["shm_name"],
           "comfyui_dir": str(comfyui_dir), "sigmas": sigmas, "ranges": ranges, "seed": settings.seed,
           "cfg": settings.cfg, "sampler_name": settings.sampler_name, "num_videos": settings.num_videos,
           "positive": positive, "negative": negative, "latent": latent}
    done = [0] * len(devices)

    def progress(rank, value, _total):
        done[rank] = value
        if on_progress is not None:
            on_progress(sum(done), settings.num_videos * settings.steps)

    started = time.perf_counter()
    try:
        results = group.call(WORKER_FN, job, on_progress=progress, should_cancel=should_cancel)
    except Cancelled:
        raise  # the stages stopped together and drained their channels: the group stays usable
    except BaseException:
        POOL.close(key)  # a crashed or failed stage: start afresh next time
        raise
    wall = time.perf_counter() - started
    stats = [StageStats(r["stats"]["stage"], tuple(r["stats"]["steps"]), r["stats"]["busy_s"], r["stats"]["span_s"],
                        [tuple(pair) for pair in r["stats"]["ticks"]]) for r in results]
    step_seconds = [s for r in results for s in r["step_seconds"]]
    return PipelineResult(results[-1]["samples"], PipelineReport(stats, settings.num_videos, wall), step_seconds)
