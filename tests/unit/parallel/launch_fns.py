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


def crash(ctx, bad_rank: int):
    """Rank `bad_rank` raises; the others wait in a barrier the failing rank never reaches."""
    if ctx.rank == bad_rank:
        raise ZeroDivisionError(f"rank {ctx.rank} divided by zero on purpose")
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
