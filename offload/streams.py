"""Copy and compute streams chosen by device type: CUDA streams and events, or their host twins.

The offloader issues its host-to-device copies inside `Streams.copying()`, makes the compute
stream wait on the copy event before the block that needs the copy runs, and records a
compute event when a swapped block is released. Before issuing a new copy the host waits on
the last such event (back-pressure): the device has then finished every released block, so at
most prefetch_blocks + 1 swapped blocks are ever on it, however far ahead the host runs.

On CUDA the copy overlaps the compute of the blocks before. Elsewhere work is done when it is
issued, so `HostStream` / `HostEvent` stand in with the same calls (an event is complete when
recorded) and the same offloading code runs everywhere; tests replace them to record a trace.
"""
import contextlib
import logging

import torch

log = logging.getLogger(__name__)


class HostEvent:
    """The host twin of `torch.cuda.Event`: work on the host is done when issued."""

    def record(self, stream=None) -> None:
        """Nothing to mark: everything issued before is already done."""

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True


class HostStream:
    """The host twin of `torch.cuda.Stream` (the calls the offloader makes)."""

    def wait_event(self, event) -> None:
        """Host work runs in issue order: nothing to wait for."""


class Streams:
    """A side stream for prefetch copies to `device` and its compute stream (CUDA), or host twins."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.side = torch.cuda.Stream(device=self.device) if self.is_cuda else HostStream()
        self.host_compute = HostStream()

    def compute(self):
        """The stream the blocks compute on (CUDA: the current one)."""
        return torch.cuda.current_stream(self.device) if self.is_cuda else self.host_compute

    def event(self):
        return torch.cuda.Event() if self.is_cuda else HostEvent()

    def copying(self):
        """Context in which copies are issued: the side stream on CUDA."""
        return torch.cuda.stream(self.side) if self.is_cuda else contextlib.nullcontext()

    def record_copies(self):
        """An event marking the copies issued so far on the side stream."""
        event = self.event()
        event.record(self.side)
        return event

    def use(self, event, tensors) -> None:
        """The compute stream waits for `event`; the allocator frees `tensors` only after the compute
        stream's use (so a released copy is freed on the stream that used it)."""
        compute = self.compute()
        compute.wait_event(event)
        if self.is_cuda:
            for tensor in tensors:
                tensor.record_stream(compute)

    def record_compute(self):
        """An event marking the compute issued so far (recorded when a swapped block is released)."""
        event = self.event()
        event.record(self.compute())
        return event

    def host_wait(self, event) -> None:
        """Block the host until `event` is complete (back-pressure on the copies)."""
        event.synchronize()


def page_lock(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of a host tensor (PyTorch's pinned host allocator frees it)."""
    return tensor.pin_memory()


def is_page_locked(tensor: torch.Tensor) -> bool:
    return tensor.is_pinned()


def pin(tensor: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, str]:
    """(`tensor` in page-locked host memory, "now" / "already") when copies go to a CUDA device.

    Other devices get (tensor, "not needed"). When page-locking fails (no driver, the OS limit
    on locked memory) the tensor stays pageable, (tensor, "failed"): the caller warns once.
    """
    if torch.device(device).type != "cuda" or tensor.device.type != "cpu":
        return tensor, "not needed"
    if is_page_locked(tensor):
        return tensor, "already"
    try:
        return page_lock(tensor), "now"
    except RuntimeError as error:
        log.debug("page-locking %d bytes failed: %s", tensor.numel() * tensor.element_size(), error)
        return tensor, "failed"
