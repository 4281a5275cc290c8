"""weight_sharding for the distributed mode: fsdp or replicate, chosen, applied in a worker, measured.

- `resolve_sharding` turns the node's auto / replicate / fsdp into one of the last two: auto is
  fsdp when a replica plus memory_reserve_gb does not fit the smallest device (parallel/sharding.py).
- `shard_worker_model` runs in each worker after the Wan model is rebuilt: fsdp shards every block
  over all ranks with FSDP2 (the embeddings and head stay whole on every rank); on the CPU each
  shard stays a view of the server's shared copy, so the workers add no copy of the blocks.
- `held_bytes` (a worker function) reports what a rank holds, measured from its tensors.
"""
import contextlib

import torch

from ...parallel.devices import free_bytes_each
from ...parallel.plan import gib, module_bytes
from ...parallel.shared_weights import return_freed_memory
from ...parallel.sharding import (ShardingPlan, fsdp_missing, group_mesh, plan_sharding, resident_bytes,
                                 shard_blocks)
from ...utils.errors import InputError
from ..wan.family import wan_blocks

SHARDED = "fsdp"


def wan_sharding_plan(diffusion_model: torch.nn.Module, world_size: int, free: int, reserve: int,
                      sharding: str = "auto") -> ShardingPlan:
    """The weight layout of a Wan model (real or on the meta device) on `world_size` devices of `free` bytes."""
    sizes = [module_bytes(block) for block in wan_blocks(diffusion_model)]
    return plan_sharding(sizes, module_bytes(diffusion_model) - sum(sizes), world_size, free, reserve, sharding)


def resolve_sharding(diffusion_model, mode: str, devices: list, reserve: int, sharding: str,
                     ranks: int) -> tuple[str, str]:
    """(replicate | fsdp, reason) for the distributed mode over `ranks` workers (remote ones assumed like
    the smallest local device); other modes take no weight_sharding."""
    if mode != "distributed":
        if sharding == SHARDED:
            raise InputError("weight_sharding", f"fsdp shards the weights over the distributed workers, "
                             f"but parallelism_type is '{mode}'", "auto or replicate, or parallelism_type distributed")
        return "replicate", ""
    free = min(free_bytes_each(devices))
    plan = wan_sharding_plan(diffusion_model, ranks, free, reserve, sharding)
    reason = f"{plan.sharding}: {gib(plan.device_bytes)} of weights per device, {gib(plan.capacity)} free after the reserve"
    missing = fsdp_missing() if plan.sharding == SHARDED else ""
    if missing:
        raise InputError("weight_sharding", f"{sharding} needs fsdp here ({reason}), but {missing}",
                         "replicate with devices that hold the whole model, or a newer torch")
    return plan.sharding, reason


def shard_worker_model(model: torch.nn.Module, device: torch.device, world_size: int, shared_on_cpu: bool) -> int:
    """fsdp in a worker: the model's non-block modules moved to `device`, every block sharded over the group.
    shared_on_cpu: the blocks' weights are views of the server's shared copy; the shards stay views.
    Returns the bytes of shards kept as views."""
    blocks = wan_blocks(model)
    for child in model.children():
        if child is not blocks:
            child.to(device)
    return shard_blocks(model, blocks, group_mesh(device, world_size), device, keep_views=shared_on_cpu)


@contextlib.contextmanager
def forward_mode(sharding: str, device: torch.device):
    """The grad mode of a worker's forward. fsdp: no_grad (FSDP2 keeps its gathered buffers between calls,
    which tensors made in inference mode cannot be: their version counter is gone; the result is the
    same), and on the CPU the pages of the blocks gathered for the call go back to the system after it
    (the C library would keep them: two whole blocks' worth held between calls in host RAM)."""
    if sharding != SHARDED:
        with torch.inference_mode():
            yield
        return
    try:
        with torch.no_grad():
            yield
    finally:
        if device.type == "cpu":
            return_freed_memory()


def held_bytes(ctx) -> dict:
    """Worker function: bytes of block weights and of the rest this rank holds now (from its tensors)."""
    model = ctx.state["model"]
    blocks = wan_blocks(model)
    rest = [child for child in model.children() if child is not blocks]
    return {"blocks": resident_bytes(blocks), "rest": resident_bytes(rest), "sharding": ctx.state.get("sharding")}
