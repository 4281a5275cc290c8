"""Running a batch-generator job: image tasks into a dataset folder, in one of three modes.

- single: one pipeline in this process (ComfyUI's own path, the reference).
- data_parallel: one pipeline; each model call's batch (cond / uncond pair, several images)
  split over the devices by parallel/replicate.
- multi_process: a worker process per device (parallel/launch), plus workers other machines
  join with the documented command; batches are handed out from one queue.

The batches are formed here, before dispatch, the same way in every mode, and each image
gets the noise of its own seed, so every mode writes the same images. Only this process
writes the dataset (see utils/dataset.py): workers send PNG bytes and manifest records.
"""
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from tqdm import tqdm

from ...parallel.launch import WorkerGroup
from ...parallel.pool import POOL
from ...utils.dataset import Dataset, ImageRecord, encode_png, record_for
from ...utils.errors import Cancelled
from ...utils.prompts import ImageTask
from ..comfy.loaders import load_weights_file
from ..comfy.patcher import non_dynamic
from ..comfy.workers import group_config
from .generate import GenerateSettings, Pipeline, load_pipeline, timed_generate, with_data_parallel

MODES = ("multi_process", "data_parallel", "single")
WORKER_FN = "models.image_batch.worker:run"
FEATURE = "image_batch"


@dataclass
class BatchJob:
    """Everything one run needs besides its tasks and its dataset folder."""
    ckpt_path: str
    settings: GenerateSettings
    mode: str
    devices: list[torch.device]
    lora_path: str | None = None
    batch_size: int = 1
    cpu_offload: bool = False
    comfyui_dir: str | None = None
    threads_per_worker: int = 1

    @property
    def pipeline_key(self) -> tuple:
        """Same key -> the same loaded pipeline can be reused (file changes included)."""
        return (self.ckpt_path, os.path.getmtime(self.ckpt_path), self.lora_path, self.settings.lora_strength,
                self.cpu_offload)


@dataclass
class Reporter:
    """Progress over all images (ComfyUI's bar through on_progress, and a console bar) and cancel."""
    total: int
    done: int = 0
    on_progress: Callable[[int, int], None] = lambda done, total: None
    should_cancel: Callable[[], bool] = lambda: False
    bar: tqdm | None = field(default=None, repr=False)

    def start(self, already_done: int) -> None:
        self.done = already_done
        self.bar = tqdm(total=self.total, initial=already_done, desc="SDXL batch", unit="img")
        self.on_progress(self.done, self.total)

    def images_done(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        self.on_progress(self.done, self.total)

    def check_cancelled(self) -> None:
        if self.should_cancel():
            raise Cancelled("batch generation cancelled")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_batches(tasks: list[ImageTask], batch_size: int) -> list[list[ImageTask]]:
    """Consecutive tasks with the same prompt and negative, up to batch_size per batch."""
    batches: list[list[ImageTask]] = []
    for task in tasks:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (last[0].prompt, last[0].negative_prompt) == (
                task.prompt, task.negative_prompt):
            last.append(task)
        else:
            batches.append([task])
    return batches


def run_job(job: BatchJob, dataset: Dataset, tasks: list[ImageTask], reporter: Reporter,
            group: WorkerGroup | None = None, remote: dict | None = None) -> int:
    """Generate every task not finished in `dataset`; returns how many images were written now.

    multi_process runs in `group`, or in the pool's group for `job` and `remote` (see worker_pool)
    with the checkpoint shared from memory.
    """
    pending = dataset.pending(tasks)
    batches = make_batches(pending, job.batch_size)
    reporter.start(len(tasks) - len(pending))
    try:
        if not batches:
            return 0
        if job.mode == "multi_process":
            if group is None:
                group, weights = worker_pool(job, remote), shared_checkpoint(job, remote)
            else:
                weights = None  # a caller's own group: its workers read the checkpoint file
            run_workers(job, batches, dataset, reporter, group, weights)
        else:
            run_in_process(job, batches, dataset, reporter)
        return len(pending)
    finally:
        reporter.close()


# --- single / data_parallel: this process ---------------------------------------------
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def cached_pipeline(job: BatchJob) -> Pipeline:
    """The job's pipeline, kept (one at a time) so the next prompt with the same model skips loading."""
    with _CACHE_LOCK:
        if _CACHE.get("key") != job.pipeline_key:
            _CACHE.clear()
            _CACHE["pipeline"] = load_pipeline(job.ckpt_path, job.lora_path, job.settings.lora_strength)
            _CACHE["key"] = job.pipeline_key
        return _CACHE["pipeline"]


def run_in_process(job: BatchJob, batches: list[list[ImageTask]], dataset: Dataset, reporter: Reporter) -> None:
    pipeline = cached_pipeline(job)
    model, parallel = pipeline.model.clone(), None
    if job.devices[0].type == "cuda":
        model.load_device = job.devices[0]
    if job.mode == "data_parallel" and len(job.devices) > 1:
        model = non_dynamic(model, "data_parallel", "each replica copies the weights, with LoRA applied")
        model, parallel = with_data_parallel(model, job.devices)
    runner = replace(pipeline, model=model)
    settings = job.settings.as_dict()
    try:
        for batch in batches:
            reporter.check_cancelled()
            images, seconds = timed_generate(runner, batch[0].prompt, batch[0].negative_prompt,
                                             [task.seed for task in batch], job.settings, reporter.check_cancelled)
            for task, image in zip(batch, images):
                record = record_for(task, settings, f"{job.mode}/{','.join(map(str, job.devices))}", seconds)
                dataset.add(record, encode_png(image, record))
            reporter.images_done(len(batch))
    finally:
        if parallel is not None:
            parallel.close()


# --- multi_process: worker processes -----------------------------------------------------
def run_workers(job: BatchJob, batches: list[list[ImageTask]], dataset: Dataset, reporter: Reporter,
                group: WorkerGroup, weights=None) -> list[int]:
    """Hand the batches to the group's workers; write what they send back. Images per worker."""
    def on_event(rank: int, message: dict) -> None:
        for record, png in zip(message["records"], message["pngs"]):
            dataset.add(ImageRecord(**record), png)
        reporter.images_done(len(message["records"]))

    payload = {"ckpt_path": job.ckpt_path, "lora_path": job.lora_path, "settings": job.settings.as_dict(),
               "pipeline_key": job.pipeline_key, "cpu_offload": job.cpu_offload, "comfyui_dir": job.comfyui_dir,
               "weights": weights}
    items = ([asdict(task) for task in batch] for batch in batches)
    return group.call(WORKER_FN, payload, tasks=items, on_event=on_event, should_cancel=reporter.should_cancel)


def pool_key(job: BatchJob, remote: dict | None = None) -> tuple:
    """The pool key of this job's workers: devices, threads, ComfyUI, offload, remote settings."""
    return (FEATURE, tuple(map(str, job.devices)), job.threads_per_worker, job.comfyui_dir, job.cpu_offload,
            tuple(sorted((remote or {}).items())))


def worker_pool(job: BatchJob, remote: dict | None = None) -> WorkerGroup:
    """The group for these devices (started now, or kept from the last prompt); one set of workers at a time.

    remote: {"remote_ranks", "master_addr", "master_port", "authkey"} to let other machines join.
    """
    key = pool_key(job, remote)
    for other in POOL.keys(FEATURE):
        if other != key:
            POOL.close(other)
    config = group_config(job.devices, job.comfyui_dir, threads_per_worker=job.threads_per_worker, **(remote or {}))
    return POOL.group(key, config)


def shared_checkpoint(job: BatchJob, remote: dict | None = None):
    """The checkpoint, copied once into shared memory for this machine's workers."""
    return POOL.shared(pool_key(job, remote), FEATURE, job.pipeline_key, lambda: load_weights_file(job.ckpt_path))


def close_pool() -> None:
    """End the kept worker group and free the shared weights."""
    POOL.close_feature(FEATURE)
