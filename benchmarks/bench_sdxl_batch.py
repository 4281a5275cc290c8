"""Batch generator throughput: 2 workers at 1 thread each vs 1 worker, the same prompt list.

`batch_generator_speedup_2workers` is the ratio of images per minute (2 workers / 1 worker),
with `batch_generator_images_per_minute_1worker` / `_2workers` beside it. Both groups are warmed
first (workers started, the tiny SD1.x checkpoint loaded through ComfyUI's loader with the DoRA
applied), so the figures are steady-state generation: ComfyUI's sampler, the VAE decode, PNG
encoding in the worker and the dataset writing in this process. The two runs alternate over
ROUNDS rounds and the median is reported. On a machine whose cores are shared with other work
the ratio falls short of 2 (each worker's generation itself slows down); the idle share of the
2 workers' time shows what the queue and the single dataset writer cost on their own.
"""
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = 12
ROUNDS = 2


def _job(devices: list[str]):
    import torch

    from comfyui_parallel.models.comfy.runtime import find_comfyui_dir
    from comfyui_parallel.models.image_batch.server import BatchJob
    from comfyui_parallel.models.image_batch.generate import GenerateSettings

    from devtools.demo_models import ensure_models

    models = REPO / "out" / "models-cache"
    ensure_models(models)  # a fresh clone has no models yet: write the tiny ones (as the tests do)
    settings = GenerateSettings(ckpt_name="tiny_sd15.safetensors", width=64, height=64, steps=3,
                                lora_name="tiny_sd15_dora.safetensors", lora_strength=0.8)
    return BatchJob(ckpt_path=str(models / "checkpoints" / "tiny_sd15.safetensors"), settings=settings,
                    mode="multi_process", devices=[torch.device(d) for d in devices],
                    lora_path=str(models / "loras" / settings.lora_name), comfyui_dir=str(find_comfyui_dir()))


def _timed_run(job, group, tasks) -> tuple[float, float]:
    """(wall seconds, summed worker generation seconds) for every task with a warm group."""
    from comfyui_parallel.models.image_batch.server import Reporter, make_batches, run_workers
    from comfyui_parallel.utils.dataset import Dataset, read_lines

    with tempfile.TemporaryDirectory() as folder:
        dataset = Dataset.open(Path(folder), resume=False)
        start = time.perf_counter()
        counts = run_workers(job, make_batches(tasks, 1), dataset, Reporter(len(tasks)), group)
        seconds = time.perf_counter() - start
        generating = sum(line.seconds for line in read_lines(dataset.manifest_path))
    assert sum(counts) == len(tasks), counts
    return seconds, generating


def run() -> dict:
    from comfyui_parallel.models.image_batch.server import WORKER_FN
    from comfyui_parallel.parallel.launch import WorkerGroup, WorkerGroupConfig
    from comfyui_parallel.utils.prompts import expand_tasks, parse_text

    tasks = expand_tasks(parse_text("\n".join(f"benchmark prompt {i}" for i in range(IMAGES))), 7, 1, "")
    jobs = {1: _job(["cpu:0"]), 2: _job(["cpu:0", "cpu:1"])}
    groups = {n: WorkerGroup(WorkerGroupConfig(devices=[str(d) for d in job.devices], threads_per_worker=1,
                                               comfyui_dir=job.comfyui_dir)) for n, job in jobs.items()}
    seconds, overhead = {1: [], 2: []}, []
    try:
        for n, group in groups.items():
            group.start()
            warm = {"ckpt_path": jobs[n].ckpt_path, "lora_path": jobs[n].lora_path, "settings": jobs[n].settings.as_dict(),
                    "pipeline_key": jobs[n].pipeline_key, "comfyui_dir": jobs[n].comfyui_dir}
            group.call(WORKER_FN, warm, tasks=[])  # every worker loads the pipeline, no image yet
            _timed_run(jobs[n], group, tasks[:2])  # first sampler / decoder calls
        for _ in range(ROUNDS):
            for n in (1, 2):
                wall, generating = _timed_run(jobs[n], groups[n], tasks)
                seconds[n].append(wall)
                if n == 2:
                    overhead.append(100.0 * (1.0 - generating / (2 * wall)))
    finally:
        for group in groups.values():
            group.close()
    per_minute = {n: 60.0 * IMAGES / statistics.median(values) for n, values in seconds.items()}
    results = {
        "batch_generator_images_per_minute_1worker": {
            "value": per_minute[1], "unit": "images/min", "better": "higher",
            "what": f"{IMAGES} 64x64 images, 3 steps, tiny SD1.x + DoRA, 1 worker at 1 thread (warm)"},
        "batch_generator_images_per_minute_2workers": {
            "value": per_minute[2], "unit": "images/min", "better": "higher",
            "what": "the same list, 2 workers at 1 thread each sharing one queue (warm)"},
        "batch_generator_speedup_2workers": {
            "value": per_minute[2] / per_minute[1], "unit": "x", "better": "higher",
            "what": "images per minute, 2 workers / 1 worker (median of alternating rounds)"},
        "batch_generator_idle_percent_2workers": {
            "value": statistics.median(overhead), "unit": "%", "better": "lower",
            "what": "share of the 2 workers' wall time not spent generating (queue hand-out, messages, "
                    "dataset writing): the engine's own cost, apart from how many free cores the machine has"},
    }
    for name, figure in results.items():
        print(f"{name}: {figure['value']:.2f} {figure['unit']} ({figure['what']})")
    return results


if __name__ == "__main__":
    run()
