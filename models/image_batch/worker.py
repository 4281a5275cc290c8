"""The batch generator's worker side: runs in each WorkerGroup process (one per GPU, or remote).

`run(ctx, job)` builds the checkpoint once per worker (kept in ctx.state between prompts),
then takes batches from the caller's queue (`ctx.next_task()`) until it is empty, so a faster
GPU takes more. Each finished image goes back to the caller as PNG bytes plus its manifest
record (plain data: pack classes do not travel); the caller writes files and manifest, one
writer, so workers on other machines need no shared output folder.

Weights: on the caller's machine they come from the caller's shared-memory copy
(`job["weights"]`); where that block does not exist (another machine), from the checkpoint
path, which must then be on a shared disk or at the same path.
"""
import socket
import time

import torch

from ...utils.dataset import encode_png, record_for
from ...utils.prompts import ImageTask
from ..comfy.runtime import ensure_comfy


def prepare_comfy(job: dict, device: torch.device) -> None:
    """Import ComfyUI in this worker, on its device; `cpu_offload` -> ComfyUI's novram mode."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ensure_comfy(job.get("comfyui_dir"), novram=bool(job.get("cpu_offload")))


def open_weights(job: dict):
    """The caller's shared-memory state dict, or None where it cannot be opened (another machine)."""
    handle = job.get("weights")
    if handle is None:
        return None
    try:
        return handle.open()
    except (FileNotFoundError, OSError):
        return None


def pipeline_for(ctx, job: dict):
    """The job's pipeline, built on first use and kept for later prompts with the same model / LoRA."""
    from ..image_batch.generate import load_pipeline

    key = job["pipeline_key"]
    cached = ctx.state.get("sdxl_pipeline")
    if cached is None or cached[0] != key:
        ctx.state.pop("sdxl_pipeline", None)
        weights = open_weights(job)
        pipeline = load_pipeline(job["ckpt_path"], job.get("lora_path"), job["settings"]["lora_strength"], weights)
        del weights
        if job.get("weights") is not None:
            job["weights"].release()
        ctx.state["sdxl_pipeline"] = cached = (key, pipeline)
    return cached[1]


def run(ctx, job: dict) -> int:
    """Generate batches from the queue until it is empty; returns how many images this worker made."""
    prepare_comfy(job, ctx.device)
    from ..image_batch.generate import GenerateSettings, timed_generate

    settings = GenerateSettings(**job["settings"])
    pipeline = pipeline_for(ctx, job)
    worker = f"{socket.gethostname()}/rank{ctx.rank}"
    made = 0
    while (batch := ctx.next_task()) is not None:
        tasks = [ImageTask(**item) for item in batch]
        start = time.perf_counter()
        images, seconds = timed_generate(pipeline, tasks[0].prompt, tasks[0].negative_prompt,
                                         [task.seed for task in tasks], settings, ctx.check_cancelled)
        records = [record_for(task, job["settings"], worker, seconds) for task in tasks]
        ctx.event({"records": [record.__dict__ for record in records],
                   "pngs": [encode_png(image, record) for image, record in zip(images, records)],
                   "seconds": time.perf_counter() - start})
        made += len(tasks)
    return made
