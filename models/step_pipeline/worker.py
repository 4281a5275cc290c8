"""The step pipeline's worker side: one stage (or one device of videos_per_device) per WorkerGroup process.

`run(ctx, job)` rebuilds ComfyUI's models this worker needs (only those whose weights its
ctx.rank_arg carries) once per worker from weights that already carry any LoRA (kept in
ctx.state between prompts; a model no longer needed is dropped) and gives each its CFG patch.
Schedule "pipeline": the stage loop (parallel/pipeline.py) receives each video's latent and
sampler state from the previous stage in seed order, runs this stage's pieces with ComfyUI's
own sampling (models/comfy/sampling.py) and sends the result on; the last stage returns the
latents. "videos_per_device": whole videos taken from the caller's queue, all pieces in turn.
Messages are plain data and tensors: the job is a dict, conditioning is ComfyUI's own lists.
"""
import time

import torch

from ...utils.errors import Cancelled
from ..comfy.runtime import ensure_comfy

CACHE = "step_pipeline_models"


def stage_models(ctx, job: dict) -> dict:
    """{model index: ModelPatcher} of the models this worker's weights are for, each rebuilt only when its
    weights changed, then given its CFG patch (VideoLinearCFGGuidance / VideoTriangleCFGGuidance)."""
    from ..comfy.guidance import apply_patches
    from ..comfy.rebuild import build_model

    weights = ctx.rank_arg["weights"]
    wanted = {job["models"][index]["key"] for index in weights}
    cache = ctx.state.setdefault(CACHE, {})
    for key in [key for key in cache if key not in wanted]:
        del cache[key]
    models = {}
    for index, shared in weights.items():
        info = job["models"][index]
        if info["key"] not in cache:
            cache[info["key"]] = build_model(info["spec"], shared.open(), ctx.device)
        models[index] = apply_patches(cache[info["key"]], info["guidance"])
    return models


def weight_bytes(models: dict) -> int:
    """Bytes of the weights these models hold in this process."""
    return sum(t.nbytes for m in models.values() for t in m.model.state_dict().values())


class StageWork:
    """`work(n, carry)` for one video n: this worker's pieces of its steps in turn, with progress."""

    def __init__(self, ctx, job: dict, models: dict):
        from .plan import to_segments

        self.ctx, self.job, self.models = ctx, job, models
        self.segments = to_segments(job["segments"])
        self.pieces = [tuple(piece) for piece in ctx.rank_arg["pieces"]]
        start, end = ctx.rank_arg["range"]
        self.done = 0
        self.total = job["num_videos"] * (end - start)
        self.step_seconds = [0.0] * (end - start)
        self.videos = 0

    def __call__(self, n: int, carry: dict | None) -> dict:
        from ..comfy.sampling import run_stage
        from .stage import piece_jobs

        job, clock, offset = self.job, [time.perf_counter()], [0]

        def on_step(step, _denoised, _x, _total):
            now = time.perf_counter()
            self.step_seconds[offset[0] + step] += now - clock[0]
            clock[0] = now
            self.done += 1
            self.ctx.progress(self.done, self.total)
            self.ctx.check_cancelled()

        jobs = piece_jobs(self.segments, self.pieces, job["seed"] + n, job["sampler_name"], job["cfg"])
        self.videos += 1
        try:
            for (index, _, _), stage_job in zip(self.pieces, jobs):
                model = self.models[self.segments[index].model]
                carry = run_stage(model, job["positive"], job["negative"], job["latent"], stage_job, carry, on_step,
                                  job["noise_mask"])
                offset[0] += stage_job.end - stage_job.start
        except Cancelled:
            # Stop this video mid-way; the stage loop's next cancel vote stops every stage together.
            return {"aborted": torch.zeros(1)}
        return carry

    def mean_step_seconds(self) -> list[float]:
        return [s / max(1, self.videos) for s in self.step_seconds]


def run(ctx, job: dict) -> dict:
    """This rank's part over all videos: a pipeline stage, or whole videos from the queue."""
    ensure_comfy(job.get("comfyui_dir"))
    models = stage_models(ctx, job)
    work = StageWork(ctx, job, models)
    names = [job["models"][index]["name"] for index in sorted(models)]
    if job["schedule"] == "pipeline":
        from ...parallel.pipeline import StageLoop

        loop = StageLoop(ctx.rank, ctx.world_size, job["num_videos"], tuple(ctx.rank_arg["range"]),
                         ctx.check_cancelled)
        stats = loop.run(work)
        samples = [output["samples"] for output in loop.outputs]
        out = {"samples": torch.cat(samples) if samples else None}
    else:
        stats, out = whole_videos(ctx, work)
    stats.models, stats.weight_bytes = tuple(names), weight_bytes(models)
    return {"stats": stats.as_dict(), "step_seconds": work.mean_step_seconds(), **out}


def whole_videos(ctx, work: StageWork):
    """videos_per_device: take video indices from the queue until it is empty, each sampled whole here."""
    from ...parallel.pipeline import StageStats

    stats = StageStats(ctx.rank, tuple(ctx.rank_arg["range"]))
    videos, begin = {}, time.perf_counter()
    while (n := ctx.next_task()) is not None:
        started = time.perf_counter()
        carry = work(n, None)
        ctx.check_cancelled()  # a cancel seen mid-video ends the call here
        stats.busy_s += time.perf_counter() - started
        stats.ticks.append((len(stats.ticks), n))
        videos[n] = carry["samples"]
    stats.span_s = time.perf_counter() - begin
    return stats, {"videos": videos}
