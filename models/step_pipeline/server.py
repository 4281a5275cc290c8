"""The step pipeline's caller side: share the models, start the stages, collect videos and the report.

Runs in ComfyUI's server (or a test): each model's weights, with its weight patches (LoRA)
applied, go once into shared memory, its CFG patch goes as plain data (patches.py), one
worker per device (a WorkerGroup kept in the pack's pool between prompts) rebuilds ComfyUI's
model and runs its part (worker.py). A stage receives only the weights of the models its steps
use (plan.py). Schedule "pipeline": the stages own step ranges and every video flows through
them; "videos_per_device": every device samples whole videos taken from a queue, holding every
model. Progress counts every video's every step over all workers; ComfyUI's cancel stops them
all. After a failure the group is closed (its channels may hold half-sent latents) and the
next prompt starts a new one.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...parallel.devices import storage_device
from ...parallel.pipeline import PipelineReport, StageStats
from ...parallel.pool import POOL
from ...utils.errors import Cancelled
from ..comfy.patcher import weights_identity
from ..comfy.rebuild import model_spec
from ..comfy.workers import group_config
from ..comfy.weights import patched_state_dict
from .patches import describe_patches
from .plan import (PipelineSettings, as_plain, check_range, models_of, segments, stage_pieces,
                   stage_ranges)
from .stage import check_splittable

__all__ = ["FEATURE", "MODEL_INPUTS", "PipelineResult", "PipelineSettings", "pool_key", "run_pipeline"]

WORKER_FN = "models.step_pipeline.worker:run"
FEATURE = "step_pipeline"
MODEL_INPUTS = ("model", "model_2")  # the node inputs of model index 0 and 1


@dataclass
class PipelineResult:
    samples: torch.Tensor  # the videos' latents concatenated in seed order
    report: PipelineReport
    step_seconds: list[float]  # measured mean seconds per sampled step (for balanced splits)


def pool_key(devices: list[torch.device], comfyui_dir) -> tuple:
    """The pool key of the stage workers for these devices and this ComfyUI."""
    names = tuple(str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices)
    return (FEATURE, names, str(comfyui_dir))


def share_models(key: tuple, models: list) -> list:
    """Each model's patched weights in shared memory for the group `key`, once per identity; only
    these models' copies are kept (one set of shared models at a time over all stage groups)."""
    for other in POOL.keys(FEATURE):
        for index in range(len(MODEL_INPUTS)):
            if other != key or index >= len(models):
                POOL.drop_weights(other, MODEL_INPUTS[index])
    return [POOL.shared(key, MODEL_INPUTS[index], weights_identity(model),
                        lambda model=model: patched_state_dict(model))
            for index, model in enumerate(models)]


def run_pipeline(model, positive, negative, latent: torch.Tensor, settings: PipelineSettings,
                 devices: list[torch.device], comfyui_dir: str | Path, measured: list[float] | None = None,
                 on_progress=None, should_cancel=None, model_2=None,
                 noise_mask: torch.Tensor | None = None) -> PipelineResult:
    """Sample settings.num_videos videos (seeds seed … seed+n−1) over len(devices) workers."""
    check_splittable(settings.sampler_name)
    models = [model] if model_2 is None else [model, model_2]
    check_range(settings, model_2 is not None)
    guidance = [describe_patches(m, name) for m, name in zip(models, MODEL_INPUTS)]
    segment_list = segments(models, settings)
    pipelined = settings.schedule == "pipeline"
    if pipelined:
        ranges = stage_ranges(settings, len(devices), segment_list, measured)
    else:
        ranges = [(settings.start_step, settings.last_step)] * len(devices)
    per_stage = stage_pieces(segment_list, ranges)
    key = pool_key(devices, comfyui_dir)
    group = POOL.group(key, group_config(key[1], key[2]))
    shared = share_models(key, models)
    job = {"models": [{"spec": model_spec(m), "guidance": g, "key": w.spec()["shm_name"], "name": name}
                      for m, g, w, name in zip(models, guidance, shared, MODEL_INPUTS)],
           "segments": [as_plain(s) for s in segment_list], "schedule": settings.schedule,
           "comfyui_dir": str(comfyui_dir), "seed": settings.seed, "cfg": settings.cfg,
           "sampler_name": settings.sampler_name, "num_videos": settings.num_videos,
           "positive": positive, "negative": negative, "latent": latent, "noise_mask": noise_mask}
    per_rank = [{"range": ranges[k], "pieces": per_stage[k],
                 "weights": {i: shared[i] for i in models_of(segment_list, per_stage[k])}} for k in range(len(devices))]
    done = [0] * len(devices)
    total = settings.num_videos * (settings.last_step - settings.start_step)

    def progress(rank, value, _total):
        done[rank] = value
        if on_progress is not None:
            on_progress(sum(done), total)

    started = time.perf_counter()
    try:
        results = group.call(WORKER_FN, job, per_rank=per_rank, on_progress=progress, should_cancel=should_cancel,
                             tasks=None if pipelined else range(settings.num_videos))
    except Cancelled:
        raise  # the workers stopped together and drained their channels: the group stays usable
    except BaseException:
        POOL.close(key)  # a crashed or failed worker: start afresh next time
        raise
    wall = time.perf_counter() - started
    stats = [StageStats.from_dict(r["stats"]) for r in results]
    report = PipelineReport(stats, settings.num_videos, wall, settings.schedule)
    if pipelined:
        return PipelineResult(results[-1]["samples"], report, [s for r in results for s in r["step_seconds"]])
    videos = {n: samples for r in results for n, samples in r["videos"].items()}
    busy = [r["step_seconds"] for r in results if r["stats"]["ticks"]]
    mean = [sum(seconds) / len(busy) for seconds in zip(*busy)]
    return PipelineResult(torch.cat([videos[n] for n in range(settings.num_videos)]), report, mean)
