"""Placement planning: which device holds which transformer block, and which parallelism to use.

`plan_blocks` cuts the block list into contiguous runs, one per device, so that the fullest
device is as empty as possible relative to its capacity (blocks spread in proportion to
free memory, leaving the most headroom for activations). It is an exact dynamic programme
over (device, block) prefixes, so it is never worse than a greedy fill such as
accelerate's `infer_auto_device_map` (a test compares the two on the same inputs).
Sizes come from modules, including modules built on the meta device, so a 14B model is
planned without allocating it.
"""
import math
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from ..utils.errors import InputError

GIB = 1024 ** 3


def gib(n_bytes: float) -> str:
    """Bytes as a short figure for messages: GiB, or MiB / KiB / B for small amounts."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(n_bytes) >= scale / 10:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


class PlanError(InputError):
    """The blocks cannot be placed on the devices; says how many bytes are missing."""

    def __init__(self, missing_bytes: int, detail: str, input_name: str = "gpu_ids"):
        self.missing_bytes = missing_bytes
        super().__init__(input_name, f"{detail}: {gib(missing_bytes)} missing",
                         "more or larger GPUs, or block offloading (blocks_to_swap / the Offload nodes)")


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each tensor counted once; meta tensors too)."""
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def block_bytes(blocks: Iterable[nn.Module]) -> list[int]:
    """Bytes of each block, in order."""
    return [module_bytes(block) for block in blocks]


@dataclass
class BlockPlan:
    """Device index per block (contiguous runs) and the bytes each device ends up holding."""

    assignment: list[int]
    device_bytes: list[int]
    capacities: list[int] = field(default_factory=list)

    @property
    def peak_fraction(self) -> float:
        """The fullest device's share of its capacity (lower leaves more headroom)."""
        return max((b / c if c else (0.0 if b == 0 else float("inf")))
                   for b, c in zip(self.device_bytes, self.capacities))

    def runs(self) -> list[tuple[int, int, int]]:
        """(device index, first block, last block + 1) for every device holding blocks."""
        runs = []
        for i, dev in enumerate(self.assignment):
            if runs and runs[-1][0] == dev:
                runs[-1] = (dev, runs[-1][1], i + 1)
            else:
                runs.append((dev, i, i + 1))
        return runs

    def describe(self, names: list[str] | None = None) -> str:
        """One line per device: its blocks, bytes and fill."""
        names = names or [f"device {i}" for i in range(len(self.device_bytes))]
        blocks = {dev: (start, end) for dev, start, end in self.runs()}
        lines = []
        for i, held in enumerate(self.device_bytes):
            start, end = blocks.get(i, (0, 0))
            span = f"blocks {start}-{end - 1}" if end > start else "no blocks"
            cap = self.capacities[i] if i < len(self.capacities) else 0
            lines.append(f"{names[i]}: {span}, {gib(held)} of {gib(cap)}")
        return "\n".join(lines)


def _run_cost(load: int, capacity: int) -> float | None:
    """Fill fraction of a device holding `load` bytes; None when it does not fit."""
    if load > capacity:
        return None
    return load / capacity if capacity else 0.0


def _solve(sizes: list[int], capacities: list[int], extra: int) -> list[int] | None:
    """Exact DP: minimise (max fill, sum of squared fills) over contiguous runs; None if nothing fits."""
    n, prefix = len(sizes), [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    best = {0: ((0.0, 0.0), [])}  # blocks placed -> (cost, assignment) after the devices so far
    for dev, cap in enumerate(capacities):
        base = extra if dev == 0 else 0
        nxt = {}
        for placed, (cost, assign) in best.items():
            for end in range(placed, n + 1):
                fill = _run_cost(base + prefix[end] - prefix[placed], cap)
                if fill is None:
                    break
                new = (max(cost[0], fill), cost[1] + fill * fill)
                if end not in nxt or new < nxt[end][0]:
                    nxt[end] = (new, assign + [dev] * (end - placed))
        best = nxt
    return best[n][1] if n in best else None


def _missing_bytes(sizes: list[int], capacities: list[int], extra: int) -> tuple[int, str]:
    """How many bytes short the devices are, and why, when no plan exists."""
    need = sum(sizes) + extra
    have = sum(capacities)
    if need > have:
        return need - have, (f"the model needs {gib(need)} (blocks {gib(sum(sizes))}, main-device parts "
                             f"{gib(extra)}) but the {len(capacities)} device(s) offer {gib(have)}")
    largest = max(capacities) if capacities else 0
    short = max(max(sizes, default=0) - largest, extra - (capacities[0] if capacities else 0), 1)
    return short, (f"the blocks ({gib(sum(sizes))}) cannot be cut into contiguous runs that fit "
                   f"devices of {', '.join(gib(c) for c in capacities)}")


def plan_blocks(block_sizes: list[int], capacities: list[int], first_device_extra: int = 0) -> BlockPlan:
    """Contiguous runs of blocks per device, balanced by fill; device 0 also holds `first_device_extra`.

    Raises PlanError with the missing bytes and a hint to offload when the blocks do not fit.
    """
    sizes, caps = [int(s) for s in block_sizes], [max(int(c), 0) for c in capacities]
    if not caps:
        raise PlanError(sum(sizes) + first_device_extra, "no device to place blocks on")
    assignment = _solve(sizes, caps, int(first_device_extra))
    if assignment is None:
        missing, detail = _missing_bytes(sizes, caps, int(first_device_extra))
        raise PlanError(missing, detail)
    held = [first_device_extra if d == 0 else 0 for d in range(len(caps))]
    for size, dev in zip(sizes, assignment):
        held[dev] += size
    return BlockPlan(assignment, held, caps)


def capacities_after_reserve(free: list[int], reserve: int) -> list[int]:
    """Usable bytes per device: free memory minus a reserve for activations, never negative."""
    return [max(int(f) - int(reserve), 0) for f in free]


@dataclass
class Recommendation:
    """A parallelism choice with the reason; blocks_to_swap_fraction > 0 means offload that share."""

    parallelism_type: str
    device_count: int
    blocks_to_swap_fraction: float
    reason: str

    def blocks_to_swap(self, num_blocks: int) -> int:
        """The fraction as a whole number of blocks (rounded up) for a model with num_blocks."""
        return min(num_blocks, math.ceil(self.blocks_to_swap_fraction * num_blocks - 1e-9))


def recommend(model_bytes: int, free: list[int], reserve: int) -> Recommendation:
    """Choose a parallelism from the model size and each device's free memory minus `reserve`.

    Fits on one device -> none (data_parallel when it fits on several); fits only across
    devices -> block_distribution; fits nowhere -> block_distribution (or none on one
    device) plus the share of blocks to swap to the CPU.
    """
    caps = capacities_after_reserve(free, reserve)
    fitting = [c for c in caps if c >= model_bytes]
    size = gib(model_bytes)
    if len(fitting) >= 2:
        return Recommendation("data_parallel", len(fitting), 0.0,
                              f"the model ({size}) fits on {len(fitting)} devices: a replica on each splits the batch")
    if fitting:
        return Recommendation("none", 1, 0.0, f"the model ({size}) fits on one device ({gib(fitting[0])} usable)")
    usable = [c for c in caps if c > 0]
    if len(usable) >= 2 and sum(usable) >= model_bytes:
        return Recommendation("block_distribution", len(usable), 0.0,
                              f"the model ({size}) fits only across {len(usable)} devices ({gib(sum(usable))} usable)")
    missing = model_bytes - sum(usable)
    fraction = min(1.0, missing / model_bytes) if model_bytes else 0.0
    kind = "block_distribution" if len(usable) >= 2 else "none"
    return Recommendation(kind, max(len(usable), 1), fraction,
                          f"the model ({size}) exceeds the usable memory ({gib(sum(usable))}) by {gib(missing)}: "
                          f"offload about {fraction:.0%} of the blocks to the CPU")
