"""Batch generator on ComfyUI's real loader, sampler and LoRA code: every mode, the same images.

The tiny SD1.x checkpoint (devtools/demo_sd15.py) goes through comfy.sd's checkpoint loader in
this process (single, data_parallel) and in worker processes (multi_process, with the weights
shared from this process). The reference is single mode: ComfyUI's plain path; every mode equals
it exactly, but data_parallel (half batches) within one level of 255 in a few values.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_parallel.models.comfy.runtime import ensure_comfy, find_comfyui_dir

ensure_comfy()
torch.set_num_threads(1)

from comfyui_parallel.models.image_batch.server import (BatchJob, Reporter, close_pool, make_batches,  # noqa: E402
                                                    run_job)
from comfyui_parallel.models.image_batch.generate import GenerateSettings  # noqa: E402
from comfyui_parallel.parallel.launch import WorkerGroup, WorkerGroupConfig  # noqa: E402
from comfyui_parallel.utils.dataset import Dataset, read_lines, read_png_record  # noqa: E402
from comfyui_parallel.utils.errors import WorkerError  # noqa: E402
from comfyui_parallel.utils.prompts import expand_tasks, parse_text  # noqa: E402

pytestmark = pytest.mark.slow
SETTINGS = GenerateSettings(ckpt_name="tiny_sd15.safetensors", width=32, height=32, steps=2, cfg=5.0,
                            lora_name="tiny_sd15_dora.safetensors", lora_strength=0.8)
TASKS = expand_tasks(parse_text("a red cube\na blue sphere\na green cone"), seed=11, images_per_prompt=2,
                     negative_prompt="blurry")


def make_job(models_cache, mode, devices, **extra) -> BatchJob:
    options = dict(batch_size=2, lora_path=str(models_cache / "loras" / SETTINGS.lora_name),
                   comfyui_dir=str(find_comfyui_dir()))
    options.update(extra)
    return BatchJob(ckpt_path=str(models_cache / "checkpoints" / "tiny_sd15.safetensors"), settings=SETTINGS,
                    mode=mode, devices=[torch.device(d) for d in devices], **options)


def images_of(folder) -> dict:
    return {task.key: np.asarray(Image.open(folder / task.file_name)).astype(np.int16) for task in TASKS}


def assert_consistent(folder) -> None:
    """Every task once in the manifest, every line's image on disk, carrying the same record."""
    lines = read_lines(folder / "manifest.jsonl")
    assert sorted(line.key for line in lines) == sorted(task.key for task in TASKS)
    for line in lines:
        assert read_png_record(folder / line.file)["seed"] == line.seed


def assert_matches(folder, reference: dict, levels: int = 0) -> None:
    """A consistent dataset whose images equal the single-mode reference: exactly, or within `levels` of 255
    in at most 0.1% of the values (a batch split in two rounds its matmuls differently in the last bits)."""
    assert_consistent(folder)
    got = images_of(folder)
    for key in reference:
        difference = np.abs(got[key] - reference[key])
        assert difference.max() <= levels and (difference > 0).mean() <= 1e-3, (key, difference.max())


@pytest.fixture(scope="module")
def reference(models_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    written = run_job(make_job(models_cache, "single", ["cpu"]), Dataset.open(folder, False), TASKS, Reporter(len(TASKS)))
    assert written == len(TASKS)
    assert_consistent(folder)
    return images_of(folder)


def test_batches_hold_consecutive_images_of_one_prompt():
    tasks = expand_tasks(parse_text("a\nb"), seed=0, images_per_prompt=3, negative_prompt="")
    assert [[task.seed for task in batch] for batch in make_batches(tasks, 2)] == [[0, 1], [2], [3, 4], [5]]


def test_images_differ_by_seed_and_lora(reference, models_cache, tmp_path):
    first, second = reference[TASKS[0].key], reference[TASKS[1].key]
    assert np.abs(first - second).mean() > 5  # consecutive seeds, clearly different images
    plain = make_job(models_cache, "single", ["cpu"], lora_path=None)
    run_job(plain, Dataset.open(tmp_path, False), TASKS[:1], Reporter(1))
    assert np.abs(np.asarray(Image.open(tmp_path / TASKS[0].file_name)).astype(np.int16) - first).max() > 0


def test_data_parallel_matches_single(reference, models_cache, tmp_path):
    run_job(make_job(models_cache, "data_parallel", ["cpu:0", "cpu:1"]), Dataset.open(tmp_path, False), TASKS,
            Reporter(len(TASKS)))
    assert_matches(tmp_path, reference, levels=1)  # each replica samples 1 image of a batch of 2


def test_multi_process_matches_single_with_shared_weights(reference, models_cache, tmp_path):
    job = make_job(models_cache, "multi_process", ["cpu:0", "cpu:1"])
    progress = []
    try:
        run_job(job, Dataset.open(tmp_path, False), TASKS, Reporter(len(TASKS), on_progress=lambda d, t: progress.append(d)))
    finally:
        close_pool()
    assert progress[0] == 0 and progress[-1] == len(TASKS) and progress == sorted(progress)
    assert_matches(tmp_path, reference)


def test_resume_after_a_worker_is_killed(reference, models_cache, tmp_path):
    job = make_job(models_cache, "multi_process", ["cpu:0", "cpu:1"])
    seen = []
    with WorkerGroup(WorkerGroupConfig(devices=["cpu:0", "cpu:1"], comfyui_dir=job.comfyui_dir)) as group:
        def kill_after_first_images(done, total):
            seen.append(done)
            if done >= 2 and group.pids and len(seen) > 1 and not hasattr(kill_after_first_images, "killed"):
                kill_after_first_images.killed = True
                os.kill(group.pids[1], signal.SIGKILL)

        with pytest.raises(WorkerError, match="worker 1"):
            run_job(job, Dataset.open(tmp_path, False), TASKS, Reporter(len(TASKS), on_progress=kill_after_first_images),
                    group)
        survived = read_lines(tmp_path / "manifest.jsonl")
        assert 2 <= len(survived) < len(TASKS) and len({line.key for line in survived}) == len(survived)
        resumed = Dataset.open(tmp_path, resume=True)
        assert len(resumed.pending(TASKS)) == len(TASKS) - len(survived)
        written = run_job(job, resumed, TASKS, Reporter(len(TASKS)), group)  # the group restarts its workers
    assert written == len(TASKS) - len(survived)
    assert_matches(tmp_path, reference)


def test_workers_started_by_the_join_command_take_the_work(reference, models_cache, tmp_path):
    """Two "machines" on 127.0.0.1: no local worker, both ranks started with the documented command."""
    from devtools.comfy_server import free_port

    job = make_job(models_cache, "multi_process", [])
    config = WorkerGroupConfig(devices=[], remote_ranks=2, master_addr="127.0.0.1", master_port=free_port(),
                               control_port=free_port(), comfyui_dir=job.comfyui_dir)
    group = WorkerGroup(config)
    commands = [group.join_command(rank, device="cpu", comfyui_dir=job.comfyui_dir, python=sys.executable)
                for rank in range(2)]
    remotes = [subprocess.Popen(["bash", "-c", command]) for command in commands]
    try:
        with group:
            run_job(job, Dataset.open(tmp_path, False), TASKS, Reporter(len(TASKS)), group)
    finally:
        for process in remotes:
            process.wait(timeout=60)
    assert all(process.returncode == 0 for process in remotes)
    assert {line.worker.rsplit("/", 1)[1] for line in read_lines(tmp_path / "manifest.jsonl")} <= {"rank0", "rank1"}
    assert_matches(tmp_path, reference)
