"""A copy stream chosen by device type: a CUDA side stream with events, or nothing on the CPU.

The offloader issues its host-to-device copies inside `CopyStream.copying()` and waits on the
returned event before the block that needs the copy runs. On CUDA the copy overlaps the
compute of the blocks before; on other devices the copy is synchronous and the event is None,
so the same offloading code runs everywhere.
"""
import contextlib

import torch


class CopyStream:
    """Side stream for prefetch copies to `device` (CUDA), a no-op stand-in elsewhere."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self.is_cuda else None

    def copying(self):
        """Context in which copies are issued: the side stream on CUDA."""
        if self.is_cuda:
            return torch.cuda.stream(self.stream)
        return contextlib.nullcontext()

    def record(self):
        """An event marking the copies issued so far, or None when copies are synchronous."""
        if not self.is_cuda:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait(self, event, tensors) -> None:
        """Make the compute stream wait for `event`; tell the allocator the compute stream uses `tensors`."""
        if event is None:
            return
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        for tensor in tensors:
            tensor.record_stream(compute)


def pin(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` in page-locked host memory when copies go to a CUDA device, else unchanged."""
    if torch.device(device).type != "cuda" or tensor.device.type != "cpu" or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()
