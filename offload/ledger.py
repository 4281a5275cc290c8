"""A ledger of the bytes an offloaded model keeps on its compute device.

On the CPU every copy is a no-op, so allocator statistics cannot show what offloading saves.
The offloader therefore books every block it brings to the compute device and every block it
releases; the ledger keeps the running total and its peak. `planned_peak` computes the same
peak from block sizes alone (also for models built on the meta device), so a test can check
that the schedule that ran is the schedule that was planned.
"""
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


def swapped_indices(num_blocks: int, blocks_to_swap: int) -> list[int]:
    """The blocks that live on the offload device: the last `blocks_to_swap` ones.

    Swapping the last blocks lets the first swapped block be prefetched while the resident
    blocks before it compute, so no copy has to start cold at the beginning of a forward.
    """
    return list(range(num_blocks - blocks_to_swap, num_blocks))


def planned_peak(block_sizes: Sequence[int], blocks_to_swap: int, prefetch_blocks: int,
                 base_bytes: int = 0) -> int:
    """Peak resident bytes of the offload schedule, from block sizes alone.

    While block i runs, the swapped blocks among i..i+prefetch_blocks are on the compute
    device (block i-1 was released before block i started); resident blocks always are.
    """
    swapped = set(swapped_indices(len(block_sizes), blocks_to_swap))
    resident = base_bytes + sum(size for i, size in enumerate(block_sizes) if i not in swapped)
    window = 0
    for i in range(len(block_sizes)):
        upcoming = range(i, min(len(block_sizes), i + prefetch_blocks + 1))
        window = max(window, sum(block_sizes[j] for j in upcoming if j in swapped))
    return resident + window


@dataclass(frozen=True)
class LedgerEvent:
    """One booking: `kind` is "fetch" (block copied to the compute device) or "release"."""

    kind: str
    block: int
    resident_bytes: int


class ResidentLedger:
    """Running total and peak of bytes resident on the compute device.

    `base_bytes` stay resident the whole time outside the block list (embeddings, head); the
    offloader declares the non-swapped blocks with `set_resident_blocks` and books each swapped
    block it fetches or releases. Listeners get the new total after each change, e.g. a memory
    monitor's `record_resident`. One ledger may follow many forwards (a whole sampling run).
    """

    def __init__(self, base_bytes: int = 0, listeners: Iterable[Callable[[int], None]] = ()):
        self.events: list[LedgerEvent] = []
        self.listeners = list(listeners)
        self.base_bytes = base_bytes
        self.resident_block_bytes = 0
        self.resident_bytes = base_bytes
        self.peak_bytes = base_bytes

    def set_resident_blocks(self, nbytes: int) -> None:
        """Declare the bytes of the blocks that are never swapped (replaces the previous value)."""
        self.resident_bytes += nbytes - self.resident_block_bytes
        self.resident_block_bytes = nbytes
        self._update()

    def fetch(self, block: int, nbytes: int) -> None:
        self.resident_bytes += nbytes
        self.events.append(LedgerEvent("fetch", block, self.resident_bytes))
        self._update()

    def release(self, block: int, nbytes: int) -> None:
        self.resident_bytes -= nbytes
        self.events.append(LedgerEvent("release", block, self.resident_bytes))
        self._update()

    def _update(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        for listener in self.listeners:
            listener(self.resident_bytes)

    planned_peak = staticmethod(planned_peak)


def choose_blocks_to_swap(block_sizes: Sequence[int], prefetch_blocks: int, budget_bytes: int,
                          base_bytes: int = 0) -> int | None:
    """The fewest swapped blocks whose planned peak fits `budget_bytes`, or None when none does."""
    for count in range(len(block_sizes) + 1):
        if planned_peak(block_sizes, count, prefetch_blocks, base_bytes) <= budget_bytes:
            return count
    return None
