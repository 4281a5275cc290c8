"""The seed guide's utility API, for scripts and notebooks, built on the engine's parts.

Runs on the CPU as well (simulated devices "cpu,cpu")::

    import torch
    from comfyui_parallel.parallel import api

    print(api.validate_gpu_setup("cpu,cpu"))        # (True, "gpu_ids 'cpu,cpu' -> cpu:0, cpu:1 ...")
    api.print_gpu_status()
    config = api.setup_optimal_parallelism("models/diffusion_models/wan.safetensors")
    with api.monitor_memory_usage(interval=0.1, duration=30) as monitor:
        timings = api.benchmark_multi_gpu_performance(model, (x, t, context), num_runs=3, gpu_ids="cpu,cpu")
    print(timings, monitor.summary())

`setup_optimal_parallelism` returns exactly the inputs of the MultiGPULoader node.
"""
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..utils.errors import InputError
from .devices import parse_gpu_ids
from .monitor import MemoryMonitor
from .placement import distribute_blocks
from .plan import GIB, block_bytes, plan_blocks
from .replicate import DataParallel
from .status import DEFAULT_RESERVE_GB, format_report, gpu_status, read_model_file, recommend_for_model


def _gpu_ids_text(devices: list[str]) -> str:
    """Devices back to a gpu_ids string: cuda:1 -> "1", simulated cpu:N -> "cpu"."""
    return ",".join("cpu" if d.startswith("cpu") else d.split(":")[-1] for d in devices)


def setup_optimal_parallelism(model_path: str | Path, gpu_ids: str | None = None,
                              memory_reserve_gb: float = DEFAULT_RESERVE_GB) -> dict:
    """The MultiGPULoader inputs recommended for `model_path` on `gpu_ids` (default: all)."""
    devices = parse_gpu_ids(gpu_ids or "all")
    model = read_model_file(model_path)
    rec = recommend_for_model(model, devices, int(memory_reserve_gb * GIB))
    precision = model.precision or "bf16"
    if precision.startswith("fp8"):
        precision = "default"  # ComfyUI's choice, as UNETLoader: an fp8 file is not upcast to twice its memory
    return {
        "unet_name": Path(model_path).name,
        "base_precision": precision,
        "load_device": "offload_device" if rec["blocks_to_swap_fraction"] else "main_device",
        "parallelism_type": rec["parallelism_type"],
        "gpu_ids": _gpu_ids_text(rec["devices"]),
        "enable_block_distribution": rec["parallelism_type"] == "block_distribution",
        "memory_reserve_gb": float(memory_reserve_gb),
    }


def validate_gpu_setup(gpu_ids: str) -> tuple[bool, str]:
    """(valid, message): the devices `gpu_ids` names, or why it is refused and what exists."""
    status = gpu_status(gpu_ids)
    return status["valid"], status["message"]


def print_gpu_status(gpu_ids: str = "all", model_path: str | Path | None = None) -> str:
    """Print (and return) the GPUStatus report."""
    report = format_report(gpu_status(gpu_ids, model_path))
    print(report)
    return report


def monitor_memory_usage(interval: float = 1.0, duration: float | None = 60.0,
                         devices: list | None = None) -> MemoryMonitor:
    """A running MemoryMonitor that stops by itself after `duration` seconds (None: at stop())."""
    return MemoryMonitor(devices, interval, duration).start()


def _call(module, inputs):
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def _time_runs(fn, num_runs: int, devices: list[torch.device]) -> tuple[dict, object]:
    """Median / min milliseconds of `num_runs` calls after one warm-up; and the last output."""
    out = fn()
    times = []
    for _ in range(num_runs):
        start = time.perf_counter()
        out = fn()
        for device in devices:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": num_runs}, out


def _max_diff(a, b) -> float | None:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return float((a.float().cpu() - b.float().cpu()).abs().max())
    return None


def _bench_block_distribution(module: nn.Module, inputs, num_runs: int, devices):
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        return None
    plan = plan_blocks(block_bytes(blocks), [10 ** 15] * len(devices))
    dist = distribute_blocks(blocks, devices, plan.assignment, devices[0])
    try:
        return _time_runs(lambda: _call(module, inputs), num_runs, devices)
    finally:
        dist.undo()


def _bench_data_parallel(module: nn.Module, inputs, num_runs: int, devices):
    dp = DataParallel(module, devices)
    try:
        return _time_runs(lambda: _call(dp, inputs), num_runs, devices)
    finally:
        dp.close()


def benchmark_multi_gpu_performance(module: nn.Module, inputs, num_runs: int = 5,
                                    gpu_ids: str = "all") -> dict:
    """Timings of `module(*inputs)` per mode: none, data_parallel, block_distribution.

    `inputs` is a tuple of args, a dict of kwargs or one tensor. Each mode reports median
    and min milliseconds and its largest difference from the plain output; modes that do not
    apply (one device; no `.blocks` ModuleList) are left out. The module is restored after.
    """
    if num_runs < 1:
        raise InputError("num_runs", f"must be at least 1, not {num_runs}")
    devices = parse_gpu_ids(gpu_ids)
    results = {}
    with torch.no_grad():
        results["none"], plain = _time_runs(lambda: _call(module, inputs), num_runs, devices[:1])
        if len(devices) > 1:
            for name, bench in (("data_parallel", _bench_data_parallel),
                                ("block_distribution", _bench_block_distribution)):
                outcome = bench(module, inputs, num_runs, devices)
                if outcome is not None:
                    timing, out = outcome
                    results[name] = {**timing, "max_abs_diff_vs_none": _max_diff(out, plain)}
    return results
