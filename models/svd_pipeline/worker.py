"""The step pipeline's worker side: one stage per WorkerGroup process.

`run(ctx, job)` rebuilds ComfyUI's model once per worker from weights that already carry any
LoRA (kept in ctx.state between prompts) and gives it the job's CFG patch, then runs the
pipeline's stage loop (parallel/pipeline.py): for each video in seed order it
receives the previous stage's latent and sampler state, runs this stage's steps with ComfyUI's
own sampling (models/comfy/sampling.py) and sends the result on. The last stage returns the latents.
Messages are plain data and tensors: the job is a dict, conditioning is ComfyUI's own lists.
"""
import time

import torch

from ...utils.errors import Cancelled
from ..comfy.runtime import ensure_comfy


def stage_model(ctx, job: dict):
    """The job's model on this worker: rebuilt only when the weights changed, then given the
    job's CFG patch (VideoLinearCFGGuidance / VideoTriangleCFGGuidance) by ComfyUI's own node."""
    from ..comfy.guidance import apply_patches
    from ..comfy.rebuild import build_model

    cached = ctx.state.get("svd_model")
    if cached is None or cached[0] != job["model_key"]:
        ctx.state.pop("svd_model", None)
        model = build_model(job["spec"], job["weights"].open(), ctx.device)
        ctx.state["svd_model"] = cached = (job["model_key"], model)
    return apply_patches(cached[1], job.get("guidance"))


class StageWork:
    """`work(n, state)` for the stage loop: this stage's steps for video n, with progress."""

    def __init__(self, ctx, job: dict, model):
        from .stage import StageJob

        self.ctx, self.job, self.model = ctx, job, model
        start, end = job["ranges"][ctx.rank]
        self.jobs = [StageJob(job["sigmas"], start, end, job["seed"] + n, job["sampler_name"], job["cfg"])
                     for n in range(job["num_videos"])]
        self.done = 0
        self.total = job["num_videos"] * (end - start)
        self.step_seconds = [0.0] * (end - start)

    def __call__(self, n: int, state: dict | None) -> dict:
        from ..comfy.sampling import run_stage

        clock = [time.perf_counter()]

        def on_step(step, _denoised, _x, _total):
            now = time.perf_counter()
            self.step_seconds[step] += now - clock[0]
            clock[0] = now
            self.done += 1
            self.ctx.progress(self.done, self.total)
            self.ctx.check_cancelled()

        job = self.job
        try:
            return run_stage(self.model, job["positive"], job["negative"], job["latent"], self.jobs[n], state, on_step)
        except Cancelled:
            # Stop this video mid-way; the stage loop's next cancel vote stops every stage together.
            return {"aborted": torch.zeros(1)}


def run(ctx, job: dict) -> dict:
    """Run this rank's stage over all videos; the last rank returns the latents in seed order."""
    ensure_comfy(job.get("comfyui_dir"))
    from ...parallel.pipeline import StageLoop

    model = stage_model(ctx, job)
    work = StageWork(ctx, job, model)
    loop = StageLoop(ctx.rank, ctx.world_size, job["num_videos"], tuple(job["ranges"][ctx.rank]), ctx.check_cancelled)
    stats = loop.run(work)
    samples = [output["samples"] for output in loop.outputs]
    return {"stats": stats.as_dict(), "step_seconds": [s / job["num_videos"] for s in work.step_seconds],
            "samples": torch.cat(samples) if samples else None}
