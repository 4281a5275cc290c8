"""Worker group: start time, command -> result round trip, and weights hand-out, on gloo (CPU).

1. `worker_group_start_s`: starting 2 workers (each an interpreter importing torch from its
   own entry point) until both joined the process group.
2. `worker_roundtrip_ms`: one call to both workers and both results back (a no-op function),
   the median over many calls in a warm group: the fixed cost a distributed step pays.
   `worker_roundtrip_1mib_ms`: the same with a 1 MiB tensor sent and returned.
3. Handing a model's weights (64 MiB) to 2 workers, interleaved and paired:
   `weights_shared_ms` (share_state_dict once, every worker opens the same pages) vs
   `weights_pickled_ms` (the state dict sent through the command channel, one copy each).
"""
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FN = "benchmarks.bench_launch"
CALLS = 200
WEIGHT_ROUNDS = 5


def echo(ctx, value=None):
    """The worker side: return what came (no work, so the round trip is the channel's cost)."""
    return value


def weight_sum(ctx, weights):
    """Open the weights (shared handle or plain dict) and touch every tensor."""
    state = weights.open() if hasattr(weights, "open") else weights
    return float(sum(t[:1].sum() for t in state.values()))


def _median_ms(group, value, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        group.call(f"{FN}:echo", value)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _weights_ms(group, state: dict) -> tuple[float, float]:
    from comfyui_parallel.parallel.shared_weights import share_state_dict

    shared, pickled = [], []
    for _ in range(WEIGHT_ROUNDS):
        started = time.perf_counter()
        handle = share_state_dict(state)
        group.call(f"{FN}:weight_sum", handle)
        shared.append(time.perf_counter() - started)
        handle.release()
        started = time.perf_counter()
        group.call(f"{FN}:weight_sum", state)
        pickled.append(time.perf_counter() - started)
    return statistics.median(shared) * 1e3, statistics.median(pickled) * 1e3


def run() -> dict:
    from comfyui_parallel.parallel.launch import WorkerGroup, WorkerGroupConfig

    started = time.perf_counter()
    group = WorkerGroup(WorkerGroupConfig(devices=["cpu", "cpu"])).start()
    start_s = time.perf_counter() - started
    try:
        _median_ms(group, None, 20)  # warm up
        roundtrip = _median_ms(group, None, CALLS)
        roundtrip_mib = _median_ms(group, torch.randn(2**18), CALLS // 4)
        state = {f"layer{i}.weight": torch.randn(1024, 1024) for i in range(16)}
        shared_ms, pickled_ms = _weights_ms(group, state)
    finally:
        group.close()
    figures = {
        "worker_group_start_s": (start_s, "s", "start 2 gloo workers until both joined the group"),
        "worker_roundtrip_ms": (roundtrip, "ms", f"median call -> results of a no-op on 2 gloo workers ({CALLS} calls)"),
        "worker_roundtrip_1mib_ms": (roundtrip_mib, "ms", "median round trip sending and returning 1 MiB per worker"),
        "weights_shared_ms": (shared_ms, "ms", "64 MiB of weights to 2 workers via shared memory (copy once, open)"),
        "weights_pickled_ms": (pickled_ms, "ms", "the same weights pickled through the command channel"),
    }
    for name, (value, unit, what) in figures.items():
        print(f"{name} = {value:.3f} {unit}: {what}")
    return {name: {"value": value, "unit": unit, "better": "lower", "what": what}
            for name, (value, unit, what) in figures.items()}


if __name__ == "__main__":
    run()
