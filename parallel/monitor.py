"""A memory monitor: per-device GPU memory and process RSS sampled in a background thread.

Use it as a context manager around the work to measure (`with MemoryMonitor() as mon: ...`),
or `start()` it and let it stop after `duration` seconds. On the CPU there is no allocator
to ask about offloaded blocks (every copy is a no-op), so an engine can report the bytes it
models as resident with `record_resident`; they appear in the timeline and summary.
CUDA peaks also use the allocator's own high-water mark when it rose during the window,
so a spike shorter than the sampling interval is not missed.
"""
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from .plan import gib

MAX_SAMPLES = 20_000  # past this the timeline keeps every other sample


@dataclass
class Sample:
    """One reading: seconds since start, process RSS, per-device allocated / reserved bytes."""

    t: float
    rss: int
    allocated: dict = field(default_factory=dict)
    reserved: dict = field(default_factory=dict)
    resident: int | None = None


def _default_devices() -> list[torch.device]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.device("cuda", i) for i in range(count)]


def _reset_kernel_peak_rss() -> bool:
    """Reset Linux's peak-RSS mark (VmHWM) for this process; False where that is unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _kernel_peak_rss() -> int | None:
    """Linux's peak RSS of this process since the last reset (VmHWM), exact where sampling can miss."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryMonitor:
    """Samples memory every `interval` seconds until stopped (or `duration` elapsed)."""

    def __init__(self, devices: list | None = None, interval: float = 0.05, duration: float | None = None):
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, not {interval}")
        chosen = _default_devices() if devices is None else [torch.device(d) for d in devices]
        self.devices = [d for d in chosen if d.type == "cuda"]
        self.interval = interval
        self.duration = duration
        self.timeline: list[Sample] = []
        self.peak_rss = 0
        self.peak_allocated: dict = {d: 0 for d in self.devices}
        self.peak_reserved: dict = {d: 0 for d in self.devices}
        self.peak_resident = 0
        self._resident: int | None = None
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_time = 0.0
        self._baseline_max: dict = {}
        self._kernel_peak = False

    def start(self) -> "MemoryMonitor":
        """Begin sampling in a daemon thread."""
        self._start_time = time.monotonic()
        self._baseline_max = {d: torch.cuda.max_memory_allocated(d) for d in self.devices}
        self._kernel_peak = _reset_kernel_peak_rss()
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "MemoryMonitor":
        """Stop sampling, take a last reading and fold in the kernel's and allocator's high-water marks.

        The kernel's peak-RSS mark catches a peak between two samples (a busy machine can delay
        the sampling thread); it is reset at start(), so monitors must not overlap in time.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.sample()
        kernel_peak = _kernel_peak_rss() if self._kernel_peak else None
        if kernel_peak is not None:
            self.peak_rss = max(self.peak_rss, kernel_peak)
        for device in self.devices:
            high = torch.cuda.max_memory_allocated(device)
            if high > self._baseline_max.get(device, 0):
                self.peak_allocated[device] = max(self.peak_allocated[device], high)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> "MemoryMonitor":
        """Block until a monitor started with a duration has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self

    def __enter__(self) -> "MemoryMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            if self.duration is not None and time.monotonic() - self._start_time >= self.duration:
                self._stop.set()

    def sample(self) -> Sample:
        """Read RSS and every device's allocated / reserved bytes now; update the peaks."""
        rss = self._process.memory_info().rss
        allocated = {d: torch.cuda.memory_allocated(d) for d in self.devices}
        reserved = {d: torch.cuda.memory_reserved(d) for d in self.devices}
        with self._lock:
            reading = Sample(time.monotonic() - self._start_time, rss, allocated, reserved, self._resident)
            self._append(reading)
            self.peak_rss = max(self.peak_rss, rss)
            for device in self.devices:
                self.peak_allocated[device] = max(self.peak_allocated[device], allocated[device])
                self.peak_reserved[device] = max(self.peak_reserved[device], reserved[device])
        return reading

    def record_resident(self, n_bytes: int) -> None:
        """An engine's modelled resident bytes (e.g. the offload ledger's running total)."""
        with self._lock:
            self._resident = int(n_bytes)
            self.peak_resident = max(self.peak_resident, self._resident)
            rss = self.timeline[-1].rss if self.timeline else 0
            self._append(Sample(time.monotonic() - self._start_time, rss, resident=self._resident))

    def _append(self, reading: Sample) -> None:
        self.timeline.append(reading)
        if len(self.timeline) > MAX_SAMPLES:
            self.timeline[:] = self.timeline[::2]

    def summary(self) -> str:
        """One line: peak RSS, per-device peak allocated (reserved), modelled resident peak, span."""
        parts = [f"peak RSS {gib(self.peak_rss)}"]
        for device in self.devices:
            parts.append(f"{device} peak allocated {gib(self.peak_allocated[device])} "
                         f"(reserved {gib(self.peak_reserved[device])})")
        if self.peak_resident:
            parts.append(f"modelled resident peak {gib(self.peak_resident)}")
        span = self.timeline[-1].t if self.timeline else 0.0
        parts.append(f"{len(self.timeline)} samples over {span:.2f} s")
        return "; ".join(parts)
