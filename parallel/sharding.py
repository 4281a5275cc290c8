"""FSDP2 weight sharding of a model's block list over a process group, and its memory figures.

`distributed` with weight_sharding fsdp gives every rank 1/N of each block's weights: torch's
own FSDP2 (`fully_shard` on a device mesh of the group) gathers a block's weights just before
it runs, frees them after (reshard_after_forward) and prefetches the next block's, so a rank
holds its shards plus at most two whole blocks. The model's other weights (embeddings, head)
are `ignored_params` of the root: replicated, untouched.

On the CPU a rank's shards can be views of one shared copy of the weights (`keep_views`):
FSDP2 re-reads each parameter's local tensor after `load_state_dict(assign=True)`, and a
dim-0 shard of a contiguous weight is a contiguous slice of it, so N ranks on one machine hold
one copy of the blocks between them, not N.

`resident_bytes` measures what a rank holds from its tensors; `fsdp_device_bytes` and
`plan_sharding` are the planning side (weights only, sizes from meta modules too).

FSDP2 is imported where a worker shards, not when the pack loads: a torch before 2.6 lacks
`torch.distributed.fsdp.fully_shard`, and there the pack still loads and weight_sharding fsdp is
refused by name (`fsdp_missing`).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

import torch
from torch import nn

from ..utils.errors import InputError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

SHARDINGS = ("auto", "replicate", "fsdp")


def fsdp_missing() -> str:
    """Why this torch cannot shard with FSDP2, or "" when it can."""
    for module, name in (("torch.distributed.fsdp", "fully_shard"), ("torch.distributed.tensor", "DTensor")):
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            return f"torch {torch.__version__} has no {module}.{name} (FSDP2, torch 2.6 or later): {exc}"
    return ""


def group_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    """A 1-D device mesh over the whole default process group, on `device`'s type."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def placement_for(world_size: int):
    """shard_placement_fn: dim 0, except for a weight whose dim 0 is shorter than the group (Wan's
    [1, 6, dim] modulation): its longest evenly dividing dim, so it is split too, not left on one rank."""
    from torch.distributed.tensor import Shard

    def placement(param: nn.Parameter) -> Shard:
        if param.shape[0] >= world_size:
            return Shard(0)
        even = [d for d in range(param.dim()) if param.shape[d] % world_size == 0]
        return Shard(max(even, key=lambda d: param.shape[d])) if even else Shard(0)

    return placement


def shard_blocks(root: nn.Module, blocks: nn.ModuleList, mesh: DeviceMesh, device: torch.device,
                 prefetch: bool = True, keep_views: bool = False) -> int:
    """fully_shard each block (moved to `device` one at a time, never the whole model at once), then
    `root` with every other parameter ignored (replicated); block i prefetches block i + 1.

    keep_views: the blocks' CPU weights are one shared copy (shared memory): each block is sharded
    on the meta device and given this rank's slices of that copy (`load_shards`), views where FSDP
    can keep them, so no private copy of the blocks is ever made. Returns the bytes kept as views.
    """
    from torch.distributed.fsdp import fully_shard

    placement = placement_for(mesh.size())
    in_blocks = {id(p) for p in blocks.parameters()}
    viewed = 0
    for block in blocks:
        sources = dict(block.named_parameters())
        _params_to(block, torch.device("meta") if keep_views else device)
        fully_shard(block, mesh=mesh, reshard_after_forward=True, shard_placement_fn=placement)
        viewed += load_shards(block, sources) if keep_views else 0
    others = {p for p in root.parameters() if id(p) not in in_blocks}
    fully_shard(root, mesh=mesh, reshard_after_forward=True, ignored_params=others)
    if prefetch:
        for block, following in zip(blocks, list(blocks)[1:]):
            block.set_modules_to_forward_prefetch([following])
    return viewed


def _params_to(block: nn.Module, device: torch.device) -> None:
    """Move a block's parameters to `device` (meta: only their shapes stay); its buffers, which are not
    sharded, move only to a real device."""
    for module in block.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.to(device), requires_grad=param.requires_grad))
        if device.type != "meta":
            for name, buffer in list(module.named_buffers(recurse=False)):
                setattr(module, name, buffer.to(device))


def _rank_slice(full: torch.Tensor, param: DTensor) -> torch.Tensor:
    """This rank's slice of the whole weight `full` on the param's shard dim (empty past the last chunk)."""
    (placement,) = param.placements
    chunks = full.chunk(param.device_mesh.size(), dim=placement.dim)
    rank = param.device_mesh.get_local_rank()
    return chunks[rank] if rank < len(chunks) else full.narrow(placement.dim, 0, 0)


def load_shards(block: nn.Module, sources: Mapping[str, torch.Tensor]) -> int:
    """Give a block sharded on the meta device its local shards: this rank's slices of the whole weights
    in `sources` (by name, as before fully_shard). FSDP2 re-reads the local tensors after
    load_state_dict(assign=True): a contiguous slice of its padded size stays a view of `sources`,
    anything else (a padded last chunk, a non-dim-0 split) FSDP copies. Returns the bytes kept as views."""
    from torch.distributed.tensor import DTensor

    shards, views = {}, {}
    for name, param in block.named_parameters():
        part = _rank_slice(sources[name], param)
        if part.is_contiguous():
            views[name] = part
        shards[name] = DTensor.from_local(part if part.is_contiguous() else part.contiguous(), param.device_mesh,
                                          param.placements, run_check=False, shape=param.shape, stride=param.stride())
    block.load_state_dict(shards, strict=False, assign=True)  # buffers are not in it: they stay
    local = {name: param.to_local() for name, param in block.named_parameters()}
    return sum(_tensor_bytes(local[name]) for name, view in views.items()
               if view.numel() and local[name].data_ptr() == view.data_ptr())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def resident_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of weights (parameters) these modules hold now, read from the tensors: a sharded parameter's
    local shard, plus any gathered (unsharded) copy FSDP still keeps allocated; a plain parameter whole."""
    total = 0
    for module in modules:
        for tensor in module.parameters():
            local = getattr(tensor, "to_local", None)  # a DTensor's shard (no FSDP import for plain models)
            total += _tensor_bytes(local() if local is not None else tensor)
        state = getattr(module, "_get_fsdp_state", None)
        group = state()._fsdp_param_group if state is not None else None
        for fsdp_param in group.fsdp_params if group is not None else []:
            gathered = getattr(fsdp_param, "_unsharded_param", None)
            if gathered is not None:
                total += gathered.untyped_storage().nbytes()
    return total


@dataclass(frozen=True)
class ShardingPlan:
    """Weights on each device for one layout, and whether it fits."""

    sharding: str
    device_bytes: int
    capacity: int

    @property
    def fits(self) -> bool:
        return self.device_bytes <= self.capacity


def fsdp_device_bytes(block_sizes: list[int], rest_bytes: int, world_size: int, prefetch: bool = True) -> int:
    """Peak weight bytes on one rank with fsdp: its shard of every block, the replicated rest, and the
    gathered blocks alive at once (the running one, plus the prefetched next)."""
    shards = sum(math.ceil(size / world_size) for size in block_sizes)
    gathered = max(block_sizes, default=0) * (2 if prefetch else 1)
    return rest_bytes + shards + gathered


def plan_sharding(block_sizes: list[int], rest_bytes: int, world_size: int, free: int, reserve: int,
                  sharding: str = "auto") -> ShardingPlan:
    """The layout for `sharding` (auto: replicate when a replica plus the reserve fits the device, else fsdp)."""
    if sharding not in SHARDINGS:
        raise InputError("weight_sharding", f"'{sharding}' is not an option", ", ".join(SHARDINGS))
    capacity = max(free - reserve, 0)
    replica = ShardingPlan("replicate", rest_bytes + sum(block_sizes), capacity)
    if sharding == "replicate" or (sharding == "auto" and replica.fits):
        return replica
    return ShardingPlan("fsdp", fsdp_device_bytes(block_sizes, rest_bytes, world_size), capacity)
