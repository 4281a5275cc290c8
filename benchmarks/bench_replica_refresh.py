"""Refreshing data-parallel replicas after the weights changed (a LoRA re-patched): in place vs rebuilt.

`DataParallel.refresh` copies the new values into the existing replica tensors; the way it
worked before built a new replica next to the old one and then dropped the old (twice the
replica memory for a moment: ~53 GiB on the other GPUs for a 14B model). A 256 MiB model of
16 Linear(2048, 2048) layers is replicated over two simulated devices (cpu:0, cpu:1: the
replica is a real copy); the peak resident memory added during each refresh is read from the
kernel's high-water mark (/proc/self/status VmHWM, reset through /proc/self/clear_refs), in
alternating rounds, medians reported. Both variants give replicas equal to the new weights.
"""
import statistics
import time
from pathlib import Path

import torch

LAYERS, WIDTH, ROUNDS = 16, 2048, 5
STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def resident_peak() -> int:
    """Bytes of the resident high-water mark since the last reset."""
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def resident_now() -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measured(refresh) -> tuple[int, float]:
    """(peak bytes added over the resident size before, seconds) of one refresh."""
    CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
    before = resident_now()
    start = time.perf_counter()
    refresh()
    return resident_peak() - before, time.perf_counter() - start


def run() -> dict:
    from comfyui_parallel.parallel.devices import parse_gpu_ids
    from comfyui_parallel.parallel.replicate import DataParallel, copy_to_device

    torch.manual_seed(0)
    source = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]).requires_grad_(False)
    devices = parse_gpu_ids("cpu,cpu")
    dp = DataParallel(source, devices)
    assert dp.replicas[1] is not source
    size = sum(p.numel() * p.element_size() for p in source.parameters())

    def rebuilt():  # the former refresh: the new replica built while the old one is still held
        dp.replicas = [source, copy_to_device(source, devices[1])]

    peaks, times = {"in_place": [], "rebuilt": []}, {"in_place": [], "rebuilt": []}
    for round_ in range(ROUNDS):
        for name, refresh in (("in_place", dp.refresh), ("rebuilt", rebuilt))[:: 1 if round_ % 2 == 0 else -1]:
            source[0].weight.add_(1.0)
            peak, seconds = measured(refresh)
            assert torch.equal(dp.replicas[1][0].weight, source[0].weight)
            peaks[name].append(peak)
            times[name].append(seconds)
    peak = {name: statistics.median(values) for name, values in peaks.items()}
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "replica_refresh_peak_extra_in_place_vs_rebuilt": {
            "value": peak["in_place"] / peak["rebuilt"], "unit": "ratio", "better": "lower",
            "what": f"peak memory added by a refresh of a {size / 2**20:.0f} MiB replica, in place / rebuilt "
                    f"({peak['in_place'] / 2**20:.0f} vs {peak['rebuilt'] / 2**20:.0f} MiB)"},
        "replica_refresh_time_in_place_vs_rebuilt": {
            "value": seconds["in_place"] / seconds["rebuilt"], "unit": "ratio", "better": "lower",
            "what": f"seconds per refresh, in place / rebuilt ({seconds['in_place'] * 1e3:.0f} vs "
                    f"{seconds['rebuilt'] * 1e3:.0f} ms)"},
    }
