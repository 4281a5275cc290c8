"""Worker functions the launch tests run inside worker processes (imported there from the pack).

Not collected by pytest (no test_ prefix). Each takes the WorkerContext first.
"""
import os
import time

import torch
import torch.distributed as dist


def identity(ctx, value=None):
    """Rank, world size, pid, device and the per-rank argument, echoed back."""
    return {"rank": ctx.rank, "world": ctx.world_size, "pid": os.getpid(), "device": str(ctx.device),
            "rank_arg": ctx.rank_arg, "value": value}


def all_reduce_rows(ctx, full: torch.Tensor):
    """Each rank sums its share of the rows; the all-reduce gives every rank the full column sum."""
    rows = full[ctx.rank::ctx.world_size]
    total = rows.sum(dim=0)
    dist.all_reduce(total)
    return total


def crash(ctx, bad_rank: int, others_wait_in_barrier: bool):
    """Rank `bad_rank` raises; the others (optionally) wait in a barrier it never reaches."""
    if ctx.rank == bad_rank:
        raise ZeroDivisionError(f"rank {ctx.rank} divided by zero on purpose")
    if others_wait_in_barrier:
        dist.barrier()
    return ctx.rank


def count_state(ctx):
    """ctx.state persists between calls."""
    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    return ctx.state["calls"]


def steps_until_cancelled(ctx, steps: int, sync: bool):
    """A step loop reporting progress, checking for cancel each step (lock-step when sync)."""
    for step in range(steps):
        ctx.check_cancelled(sync=sync)
        ctx.progress(step + 1, steps)
        time.sleep(0.02)
    return steps


def drain_tasks(ctx):
    """Take tasks until none are left; report each as an event."""
    taken = []
    while (item := ctx.next_task()) is not None:
        taken.append(item)
        ctx.event({"item": item, "square": item * item})
    return taken


def sleep_forever(ctx):
    """Block until killed (for the SIGKILL test), reporting readiness first."""
    ctx.event({"pid": os.getpid()})
    while True:
        time.sleep(0.05)


def module_report(ctx):
    """What the worker imported: the pack alias, its own entry point, no generic top-level names."""
    import sys

    generic = {"utils", "models", "nodes", "parallel", "offload", "launch", "devices", "sequence", "main"}
    return {"alias": "comfyui_parallel" in sys.modules, "main_file": sys.modules["__main__"].__file__,
            "generic": sorted(generic & set(sys.modules)), "threads": torch.get_num_threads()}


def run_shared_linear(ctx, handle, x: torch.Tensor, poke: bool):
    """Rebuild a Linear from shared weights, run it; rank 0 optionally writes into the weights."""
    from comfyui_parallel.parallel.shared_weights import rebuild_module

    module = rebuild_module("torch.nn:Linear", {"in_features": x.shape[-1], "out_features": 3}, handle)
    with torch.no_grad():
        out = module(x)
    dist.barrier()  # every rank has run before rank 0 writes
    if poke and ctx.rank == 0:
        handle.open()["bias"][0] = 42.0
    dist.barrier()
    return out


class WithBuffer(torch.nn.Module):
    """A module whose __init__ computes a non-persistent buffer (absent from its state dict)."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.register_buffer("scale", torch.arange(1, width + 1, dtype=torch.float32), persistent=False)

    def forward(self, x):
        return self.proj(x) * self.scale


def message_backend(ctx):
    """The running group's backend mapping and the device the step pipeline sends tensors on."""
    from comfyui_parallel.parallel.backend import current_message_device

    return {"config": dist.get_backend_config(), "device": str(current_message_device())}


def environment(ctx, name: str):
    """One variable of this worker's environment (None when unset)."""
    return os.environ.get(name)
