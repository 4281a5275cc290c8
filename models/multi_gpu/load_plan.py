"""When and from what the block placement of a Multi-GPU MODEL is planned: at load, from free memory then.

ComfyUI calls `model_size()` before it frees memory for a load, so a plan made at that call
would see the main device still holding other models. The placement is therefore planned in
`load`, after ComfyUI made room, and `model_size()` before the first load is an estimate from
the free memory of the moment (not kept). When ComfyUI loads a model it already holds, the
placement is made again if it no longer fits, or if a device's capacity changed by more than the
largest block and a new plan differs (what the placement itself holds on a device counts as free
there: moving it away would free it).
"""
from dataclasses import dataclass

import torch

from ...parallel.devices import free_bytes_each
from ...parallel.plan import PlanError, plan_blocks


@dataclass
class Placement:
    """The block placement of one BaseModel (shared by all its patcher clones, like its weights)."""

    assignment: list[int]
    device_bytes: list[int]
    capacities: list[int]
    distribution: object = None  # parallel.placement.BlockDistribution once the blocks are placed

    def main_blocks(self) -> set[int]:
        """Indices of the blocks planned on the main device (ComfyUI loads those itself)."""
        return {i for i, a in enumerate(self.assignment) if a == 0}


def capacities(devices: list[torch.device], reserve: int, held: list[int]) -> list[int]:
    """Usable bytes per device now: free memory (a shared device split between its entries) less the reserve,
    plus what this model holds there."""
    return [max(free - reserve + h, 0) for free, h in zip(free_bytes_each(devices), held)]


def held_bytes(placement: Placement | None, block_sizes: list[int], main_loaded: int, count: int) -> list[int]:
    """Bytes this model holds per device: ComfyUI's loaded bytes on the main one, placed blocks elsewhere."""
    held = [main_loaded] + [0] * (count - 1)
    if placement is not None and placement.distribution is not None:
        for size, device in zip(block_sizes, placement.assignment):
            if device:
                held[device] += size
    return held


def plan(block_sizes: list[int], caps: list[int], rest: int) -> Placement:
    """A placement for these capacities (PlanError when the blocks do not fit)."""
    found = plan_blocks(block_sizes, caps, first_device_extra=rest)
    return Placement(found.assignment, found.device_bytes, list(caps))


def estimate_main_blocks(block_sizes: list[int], caps: list[int], rest: int) -> set[int]:
    """The blocks a plan from `caps` would put on the main device; all of them when none fits yet."""
    try:
        return plan(block_sizes, caps, rest).main_blocks()
    except PlanError:  # before ComfyUI made room: ask for the whole model on the main device
        return set(range(len(block_sizes)))


def changed(before: list[int], now: list[int], block_sizes: list[int]) -> bool:
    """Whether some device's capacity moved by more than the largest block since `before`."""
    step = max(block_sizes, default=0)
    return any(abs(a - b) > step for a, b in zip(before, now))


def needs_new_plan(current: Placement, block_sizes: list[int], caps: list[int], rest: int) -> bool:
    """Plan again when the placement no longer fits `caps`, or when a capacity changed by more than a
    block and a plan from `caps` differs; never when no plan fits `caps` (nothing better to do)."""
    try:
        fresh = plan(block_sizes, caps, rest)
    except PlanError:
        return False
    if any(held > cap for held, cap in zip(current.device_bytes, caps)):
        return True
    return changed(current.capacities, caps, block_sizes) and fresh.assignment != current.assignment
