"""The step pipeline's caller side: share the model, start the stages, collect videos and the report.

Runs in ComfyUI's server (or a test): the model's weights, with its weight patches (LoRA)
applied, go once into shared memory, its CFG patch goes as plain data (svd_model_patches.py),
one worker per device (a long-lived WorkerGroup, kept between prompts) rebuilds ComfyUI's
model and runs its stage of the steps (models/svd_stage_worker.py). Progress counts every video's
every step over all stages; ComfyUI's cancel stops all stages. After a cancel or a failure the
group is closed (its channels may hold half-sent latents) and the next prompt starts a new one.
"""
import atexit
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..parallel.devices import storage_device
from ..parallel.launch import WorkerGroup, WorkerGroupConfig
from ..parallel.pipeline import PipelineReport, StageStats, split_steps
from ..parallel.shared_weights import share_state_dict
from ..utils.errors import Cancelled
from .svd_model_patches import describe_patches, patched_state_dict, weights_key
from .svd_stage import check_splittable, model_spec, schedule_sigmas

WORKER_FN = "models.svd_stage_worker:run"


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


class _Groups:
    """Long-lived worker groups by (devices, ComfyUI folder); closed on failure or cancel."""

    def __init__(self):
        self.groups: dict[tuple, WorkerGroup] = {}
        # (weights_key, SharedWeights, base model kept alive so its id is not reused) of the latest model
        self.weights: tuple | None = None

    def get(self, names: tuple, comfyui_dir: str) -> WorkerGroup:
        key = (names, comfyui_dir)
        if key not in self.groups:
            self.groups[key] = WorkerGroup(WorkerGroupConfig(devices=list(names), comfyui_dir=comfyui_dir))
        return self.groups[key]

    def discard(self, group: WorkerGroup) -> None:
        for key, value in list(self.groups.items()):
            if value is group:
                del self.groups[key]
        group.close()

    def shared_weights(self, model):
        """The model's weights, weight patches applied, in shared memory; made once per model and
        patch set (the latest one is kept)."""
        key = weights_key(model)
        if self.weights is None or self.weights[0] != key:
            self.release_weights()
            self.weights = (key, share_state_dict(patched_state_dict(model)), model.model)
        return self.weights[1]

    def release_weights(self) -> None:
        if self.weights is not None:
            self.weights[1].release()
            self.weights = None

    def close_all(self) -> None:
        for group in list(self.groups.values()):
            group.close()
        self.groups.clear()
        self.release_weights()


GROUPS = _Groups()
atexit.register(GROUPS.close_all)


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
    names = tuple(str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices)
    group = GROUPS.get(names, str(comfyui_dir))
    weights = GROUPS.shared_weights(model)
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
        GROUPS.discard(group)  # a crashed or failed stage: start afresh next time
        raise
    wall = time.perf_counter() - started
    stats = [StageStats(r["stats"]["stage"], tuple(r["stats"]["steps"]), r["stats"]["busy_s"], r["stats"]["span_s"],
                        [tuple(pair) for pair in r["stats"]["ticks"]]) for r in results]
    step_seconds = [s for r in results for s in r["step_seconds"]]
    return PipelineResult(results[-1]["samples"], PipelineReport(stats, settings.num_videos, wall), step_seconds)
