"""Back-pressure and pinning of the offloader, proven on the CPU with the code the GPU runs.

The window bound: a recording twin of the host streams logs every compute event recorded and
every host wait, the ledger logs every fetch and release. Replayed against the worst device (one
that lags arbitrarily far behind the host), a released block's copy is known freed only once the
host has waited on an event recorded after its release; the copies on the device at any time are
then at most prefetch_blocks + 1. Without the host wait the replay finds every swapped block there.

Pinning: this machine has no CUDA driver, so page-locking really fails (the fallback path); a
stand-in page-locker shows what happens where it succeeds.
"""
import logging

import pytest
import torch
from torch import nn

from comfyui_parallel.offload import streams
from comfyui_parallel.offload.ledger import ResidentLedger
from comfyui_parallel.offload.streams import HostEvent, Streams, pin
from comfyui_parallel.offload.swap import BlockOffloader, OffloadConfig, disable_offload, enable_offload, place_blocks

NUM_BLOCKS = 8


def stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(8, 8) for _ in range(NUM_BLOCKS))).eval()


class RecordingStreams(Streams):
    """The host streams, logging (kind, number) for each compute event recorded and each host wait."""

    def __init__(self, trace: list):
        super().__init__(torch.device("cpu"))
        self.trace = trace

    def record_compute(self):
        event = super().record_compute()
        event.number = sum(kind == "record" for kind, _ in self.trace)
        self.trace.append(("record", event.number))
        return event

    def host_wait(self, event) -> None:
        self.trace.append(("wait", event.number))
        super().host_wait(event)


def run_traced(prefetch: int, forwards: int = 2) -> list:
    model = stack()
    blocks = nn.ModuleList(model)
    trace = []
    ledger = ResidentLedger()
    seen = []

    def booked(_resident_bytes):  # also called when the resident blocks are declared: no event then
        trace.extend((e.kind, e.block) for e in ledger.events[len(seen):])
        seen[:] = ledger.events

    ledger.listeners.append(booked)
    offloader = BlockOffloader(blocks, OffloadConfig(6, prefetch_blocks=prefetch), ledger, RecordingStreams(trace))
    offloader.attach()
    with torch.no_grad():
        for _ in range(forwards):
            offloader.resume()
            model(torch.randn(1, 8))
            offloader.disable()
    return trace


def most_on_a_lagging_device(trace: list) -> int:
    """The most swapped copies a device that lags arbitrarily far behind the host could hold at once."""
    on_device, released, covers, fetches, most = set(), [], {}, {}, 0
    for kind, value in trace:
        if kind == "fetch":
            fetches[value] = fetches.get(value, 0) + 1
            on_device.add((value, fetches[value]))  # one copy per fetch, also across forwards
            most = max(most, len(on_device))
        elif kind == "release":
            released.append((value, fetches[value]))
        elif kind == "record":
            covers[value] = list(released)  # the device has finished these when this event completes
        elif kind == "wait":
            on_device -= set(covers[value])
    return most


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_at_most_prefetch_plus_one_swapped_blocks_on_the_device(prefetch):
    trace = run_traced(prefetch)
    assert sum(kind == "fetch" for kind, _ in trace) == 12  # 6 swapped blocks, 2 forwards
    assert most_on_a_lagging_device(trace) == prefetch + 1


def test_without_the_host_wait_a_lagging_device_holds_every_swapped_block(monkeypatch):
    monkeypatch.setattr(RecordingStreams, "host_wait", lambda self, event: None)
    assert most_on_a_lagging_device(run_traced(1)) == 12  # both forwards' copies


def test_the_host_twins_answer_like_cuda_events():
    event = HostEvent()
    event.record(Streams(torch.device("cpu")).compute())
    event.synchronize()
    assert event.query()


def swapped_tensors(blocks, count):
    return [t for block in list(blocks)[-count:] for t in [*block.parameters(), *block.buffers()]]


def test_pinning_is_the_default_for_cuda_only():
    assert OffloadConfig(1, compute_device="cuda").pins()
    assert not OffloadConfig(1, compute_device="cuda", pin_memory=False).pins()
    assert not OffloadConfig(1, compute_device="cpu", pin_memory=True).pins()


def test_failed_pinning_warns_and_keeps_the_pageable_weights(caplog):
    blocks = nn.ModuleList(stack())
    before = [t.data_ptr() for t in swapped_tensors(blocks, 3)]
    assert pin(torch.ones(4), torch.device("cuda"))[1] == "failed"  # no CUDA driver on this machine
    with caplog.at_level(logging.INFO):
        place_blocks(blocks, OffloadConfig(3, compute_device="cuda"), swapped_only=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not be page-locked" in warnings[0] and "pageable" in warnings[0]
    assert [t.data_ptr() for t in swapped_tensors(blocks, 3)] == before


class FakePageLocker:
    """Stands in for CUDA's page-locking: a copy, remembered as locked."""

    def __init__(self, monkeypatch):
        self.locked, self.calls = set(), 0
        monkeypatch.setattr(streams, "page_lock", self.lock)
        monkeypatch.setattr(streams, "is_page_locked", lambda t: t.data_ptr() in self.locked)

    def lock(self, tensor):
        self.calls += 1
        copy = tensor.clone()
        self.locked.add(copy.data_ptr())
        return copy


def test_swapped_blocks_pinned_once_in_place_of_the_pageable_copy(monkeypatch, caplog):
    locker = FakePageLocker(monkeypatch)
    model = stack()
    blocks = nn.ModuleList(model)
    x = torch.randn(1, 8)
    with torch.no_grad():
        expected = model(x)
    params = swapped_tensors(blocks, 3)
    pageable = [p.data for p in params]  # held, so their memory cannot be reused by the pinned copies
    config = OffloadConfig(3, compute_device="cuda")
    with caplog.at_level(logging.INFO):
        for _ in range(2):  # placed again, as SeedVR does for every sampling phase
            place_blocks(blocks, config, swapped_only=True)
    assert locker.calls == len(params)
    old = {t.data_ptr() for t in pageable}
    assert all(p.data_ptr() in locker.locked and p.data_ptr() not in old for p in params)
    assert [p for p in swapped_tensors(blocks, 3)] == params  # the parameters kept their identity
    assert not [t for t in swapped_tensors(blocks, NUM_BLOCKS)[: -len(params)] if t.data_ptr() in locker.locked]
    lines = [r.getMessage() for r in caplog.records if "page-locked" in r.getMessage()]
    assert len(lines) == 1 and "one host copy" in lines[0]
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_seedvr_style_enable_on_cpu_pins_nothing(monkeypatch):
    locker = FakePageLocker(monkeypatch)
    blocks = nn.ModuleList(stack())
    enable_offload(blocks, OffloadConfig(4))
    disable_offload(blocks)
    assert locker.calls == 0 and not OffloadConfig(4).pins()
