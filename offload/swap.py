"""Block offloading with prefetch: run a model whose blocks do not all fit on the compute device.

The last `blocks_to_swap` blocks of a block list live on the offload device (host memory,
page-locked by default when the compute device is CUDA). A forward pre-hook on block i issues
the copies of the swapped blocks among i..i+prefetch_blocks that are not on their way yet (on a
CUDA side stream, ordered by events), then points block i's parameters at its device copy; a
forward hook points them back at the host tensors, which drops the device copy, and records a
compute event. Before issuing a copy the host waits on the last of those events, so the device
never holds more than prefetch_blocks + 1 swapped blocks however far ahead the host runs (see
streams.py). Weights are read-only during inference, so nothing is copied back and the host
keeps exactly one copy of the weights (pinning replaces the pageable copy, it does not add one).

Every copy goes through `transfer`; on the CPU it returns the tensor itself, so the same code
runs with no-op copies and tests prove the schedule by spying on `transfer` and the ledger.
"""
from dataclasses import dataclass, field
from functools import partial
from weakref import WeakKeyDictionary

import logging

import torch
from torch import nn

from ..utils.errors import InputError
from .ledger import ResidentLedger, swapped_indices
from .streams import Streams, pin

log = logging.getLogger(__name__)
_ACTIVE: "WeakKeyDictionary[nn.ModuleList, BlockOffloader]" = WeakKeyDictionary()


def transfer(tensor: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
    """The one place where offloading copies a tensor between devices."""
    return tensor.to(device, non_blocking=non_blocking)


@dataclass
class OffloadConfig:
    """How to offload a block list. Only the last `blocks_to_swap` blocks are swapped.

    `pin_memory` None (the default) page-locks the swapped blocks when the compute device is CUDA.
    """

    blocks_to_swap: int
    prefetch_blocks: int = 1
    pin_memory: bool | None = None
    offload_device: str | torch.device = "cpu"
    compute_device: str | torch.device = "cpu"

    def check(self, num_blocks: int) -> None:
        """Raise InputError naming the bad field and its allowed values."""
        if not 0 <= self.blocks_to_swap <= num_blocks:
            raise InputError("blocks_to_swap", f"{self.blocks_to_swap} for a model of {num_blocks} blocks",
                             f"0..{num_blocks}")
        if self.prefetch_blocks < 0:
            raise InputError("prefetch_blocks", f"{self.prefetch_blocks} is negative", "0 or more")
        if torch.device(self.offload_device).type != "cpu":
            raise InputError("offload_device", f"{self.offload_device!r} is not host memory", "cpu")

    def pins(self) -> bool:
        """Whether the swapped blocks are page-locked: by default, or when asked, and only for CUDA."""
        return torch.device(self.compute_device).type == "cuda" and self.pin_memory is not False


@dataclass
class _Fetched:
    """A swapped block on its way to the compute device: ready after `event`.

    `moved` lists (slot, host tensor, device copy) for the tensors that really were copied;
    on the CPU `transfer` returns the host tensor itself and the list stays empty.
    """

    moved: list
    event: object
    nbytes: int
    active: bool = False


@dataclass
class _BlockSlots:
    """Where a block keeps its tensors: (module, name, is_parameter) for each parameter/buffer."""

    slots: list = field(default_factory=list)
    nbytes: int = 0

    @classmethod
    def of(cls, block: nn.Module) -> "_BlockSlots":
        found = cls()
        for module in block.modules():
            for is_param, table in ((True, module._parameters), (False, module._buffers)):
                for name, tensor in table.items():
                    if tensor is not None:
                        found.slots.append((module, name, is_param))
                        found.nbytes += tensor.numel() * tensor.element_size()
        return found

    def tensors(self) -> list:
        """The current tensor of each slot (the Parameter object, or the buffer)."""
        return [(module._parameters if is_param else module._buffers)[name] for module, name, is_param in self.slots]

    @staticmethod
    def point(slot: tuple, tensor: torch.Tensor) -> None:
        """Make one parameter / buffer use `tensor` (parameters keep their identity)."""
        module, name, is_param = slot
        if is_param:
            module._parameters[name].data = tensor
        else:
            module._buffers[name] = tensor


class BlockOffloader:
    """The hooks and state of one offloaded block list.

    `attach()` places the blocks and starts offloading; `disable()` removes the hooks and
    releases what is on the compute device; `resume()` registers the hooks again without
    placing anything (cheap enough to do around every forward).
    """

    def __init__(self, blocks: nn.ModuleList, config: OffloadConfig, ledger: ResidentLedger | None = None,
                 streams: Streams | None = None):
        self.blocks = blocks
        self.config = config
        self.compute_device = torch.device(config.compute_device)
        self.swapped = swapped_indices(len(blocks), config.blocks_to_swap)
        self.is_swapped = set(self.swapped)
        self.slots = [_BlockSlots.of(block) for block in blocks]
        self.ledger = ledger if ledger is not None else ResidentLedger()
        self.stream = streams if streams is not None else Streams(self.compute_device)
        self.fetched: dict[int, _Fetched] = {}
        self.released = None  # compute event recorded at the last release: the host waits on it before a copy
        self.handles = []
        self.upcoming = [[j for j in range(i, min(len(blocks), i + config.prefetch_blocks + 1)) if j in self.is_swapped]
                         for i in range(len(blocks))]

    def attach(self) -> None:
        """Place the blocks and register the hooks of the swapped schedule."""
        _place(self.slots, self.config)
        self.resume()

    def resume(self) -> None:
        """Register the hooks (again); the blocks are assumed placed."""
        if _ACTIVE.get(self.blocks) not in (None, self):
            _ACTIVE[self.blocks].disable()
        _ACTIVE[self.blocks] = self
        self.ledger.set_resident_blocks(sum(s.nbytes for i, s in enumerate(self.slots) if i not in self.is_swapped))
        if self.handles or not self.swapped:
            return
        first = self.swapped[0] - self.config.prefetch_blocks
        for index in range(max(0, first), len(self.blocks)):
            block = self.blocks[index]
            self.handles.append(block.register_forward_pre_hook(partial(self._before, index), with_kwargs=True))
            if index in self.is_swapped:
                self.handles.append(block.register_forward_hook(partial(self._after, index)))

    def _before(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled() and index in self.is_swapped:
            _refuse_gradients(module, args, kwargs)
        for upcoming in self.upcoming[index]:
            if upcoming not in self.fetched:
                self._bound_window()
                self._fetch(upcoming)
        fetched = self.fetched.get(index)
        if fetched is not None and not fetched.active:
            self.stream.use(fetched.event, [copy for _, _, copy in fetched.moved])
            for slot, _, copy in fetched.moved:
                _BlockSlots.point(slot, copy)
            fetched.active = True

    def _bound_window(self) -> None:
        """Back-pressure: wait until the device has finished every released block (their copies are freed)."""
        if self.released is not None:
            self.stream.host_wait(self.released)
            self.released = None

    def _fetch(self, index: int) -> None:
        slots = self.slots[index]
        hosts = slots.tensors()
        with self.stream.copying():
            copies = [transfer(host, self.compute_device, non_blocking=True) for host in hosts]
        moved = [(slot, _data(host), copy) for slot, host, copy in zip(slots.slots, hosts, copies) if copy is not host]
        self.fetched[index] = _Fetched(moved, self.stream.record_copies(), slots.nbytes)
        self.ledger.fetch(index, slots.nbytes)

    def _after(self, index: int, module: nn.Module, args: tuple, output) -> None:
        self._release(index)

    def _release(self, index: int) -> None:
        fetched = self.fetched.pop(index, None)
        if fetched is None:
            return
        if fetched.active:
            for slot, host, _ in fetched.moved:
                _BlockSlots.point(slot, host)
        self.ledger.release(index, fetched.nbytes)
        self.released = self.stream.record_compute()

    def disable(self) -> None:
        """Remove the hooks and release every block still on the compute device; `resume()` undoes it."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for index in list(self.fetched):
            self._release(index)
        if _ACTIVE.get(self.blocks) is self:
            del _ACTIVE[self.blocks]


def _data(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter's data (what `point` restores), a buffer itself."""
    return tensor.data if isinstance(tensor, nn.Parameter) else tensor


def _place(slots: list, config: OffloadConfig, swapped_only: bool = False) -> None:
    """Swapped blocks to the offload device (page-locked when `config.pins()`), the others to the compute device."""
    compute, offload = torch.device(config.compute_device), torch.device(config.offload_device)
    swapped = set(swapped_indices(len(slots), config.blocks_to_swap))
    for index, block_slots in enumerate(slots):
        if swapped_only and index not in swapped:
            continue
        device = offload if index in swapped else compute
        for slot, tensor in zip(block_slots.slots, block_slots.tensors()):
            if tensor.device != device:
                _BlockSlots.point(slot, transfer(_data(tensor), device))
    if config.pins():
        _pin_slots([slots[i] for i in sorted(swapped)], compute).say()


@dataclass
class PinReport:
    """Bytes of swapped blocks page-locked by this call, already page-locked, and left pageable."""

    pinned: int = 0
    already: int = 0
    failed: int = 0

    def say(self) -> "PinReport":
        """One console line for what was pinned now, one warning for what could not be."""
        if self.pinned:
            log.info("offload: %.2f GiB of host RAM page-locked for the swapped blocks (one host copy; "
                     "%.2f GiB were already)", self.pinned / 2**30, self.already / 2**30)
        if self.failed:
            log.warning("offload: %.2f GiB of swapped blocks could not be page-locked (no CUDA driver, or the "
                        "system's locked-memory limit); they stay in pageable memory, so their copies to the GPU "
                        "are slower and not fully asynchronous", self.failed / 2**30)
        return self


def _pin_slots(slots: list, device: torch.device) -> PinReport:
    report = PinReport()
    for block_slots in slots:
        for slot, tensor in zip(block_slots.slots, block_slots.tensors()):
            target, status = pin(_data(tensor), device)
            size = tensor.numel() * tensor.element_size()
            if status == "now":
                _BlockSlots.point(slot, target)  # the pageable copy is dropped: one host copy
                report.pinned += size
            elif status == "already":
                report.already += size
            elif status == "failed":
                report.failed += size
    return report


def pin_blocks(blocks, device: torch.device) -> PinReport:
    """Page-lock every tensor of `blocks` for copies to `device` (CUDA; elsewhere nothing happens)."""
    return _pin_slots([_BlockSlots.of(block) for block in blocks], torch.device(device)).say()


def place_blocks(blocks: nn.ModuleList, config: OffloadConfig, swapped_only: bool = False) -> None:
    """Put each block where `config` keeps it between forwards, copying only what is elsewhere.

    With `swapped_only` the resident blocks are left to whoever loads them (ComfyUI's loader).
    """
    config.check(len(blocks))
    _place([_BlockSlots.of(block) for block in blocks], config, swapped_only)


def _refuse_gradients(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Offloaded weights are swapped back after each block, which autograd cannot follow."""
    inputs = [*args, *kwargs.values()]
    needs_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
    if needs_grad or any(p.requires_grad for p in module.parameters()):
        raise InputError("blocks_to_swap", "offloaded blocks run for inference only, but this forward records "
                         "gradients", "0 when training (gradient checkpointing works without offloading)")


def enable_offload(blocks: nn.ModuleList, config: OffloadConfig, ledger: ResidentLedger | None = None) -> BlockOffloader:
    """Offload `blocks` as `config` says (replacing any earlier offloading of the same list)."""
    config.check(len(blocks))
    disable_offload(blocks)
    offloader = BlockOffloader(blocks, config, ledger)
    offloader.attach()
    return offloader


def disable_offload(blocks: nn.ModuleList) -> None:
    """Undo `enable_offload` on `blocks` (no-op when not offloaded). Blocks stay where they are."""
    offloader = _ACTIVE.get(blocks)
    if offloader is not None:
        offloader.disable()


def active_offloader(blocks: nn.ModuleList) -> BlockOffloader | None:
    """The offloader currently attached to `blocks`, if any."""
    return _ACTIVE.get(blocks)
