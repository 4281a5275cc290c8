"""A long-lived group of worker processes forming a torch.distributed group.

One worker per device (gloo on the CPU, nccl for CUDA; gloo when a GPU is named twice: see
backend.py). The caller sends calls and gets results back in rank order; a worker's exception
comes back as WorkerError with its traceback; a worker that dies (even by SIGKILL) becomes a
WorkerError naming the rank and the signal, never a hang; cancel stops every worker at its
next `ctx.check_cancelled()`; close ends every child. The group stays up between calls
(ctx.state keeps a loaded model).

After a failure or cancel the other ranks are told to stop; a rank that does not stop within
stop_grace_s (it waits in a collective a peer left) ends the group, and the next call starts
a fresh one. Lock-step loops avoid that with `ctx.check_cancelled(sync=True)`. An exception
raised by a caller callback (e.g. ComfyUI's interrupt from on_progress) stops the ranks the
same way and is re-raised.

    with WorkerGroup(WorkerGroupConfig(devices=["cpu", "cpu"])) as group:
        sums = group.call("parallel.some_module:step", latent, per_rank=[...])

Workers start from their own entry point (parallel/worker_main.py) with subprocess, not
multiprocessing's spawn, which re-runs ComfyUI's main.py in every child (DESIGN.md).
Locally the rendezvous is a FileStore in a private temp folder and the command channel
listens on 127.0.0.1: nothing is reachable from the network.

Several machines: set master_addr to this machine's address, master_port (the rendezvous;
the command channel uses master_port + 1 unless control_port is set) and remote_ranks. Local
workers take ranks 0..len(devices)-1; start each remote rank with `group.join_command(rank)`,
which prints a torchrun-style command to run on the other machine (with the group's `env`, the
settings local workers get too, such as the server's ComfyUI flags), for example

    MASTER_ADDR=10.0.0.5 MASTER_PORT=29500 RANK=2 WORLD_SIZE=3 LOCAL_RANK=0 \\
    COMFYUI_PARALLEL_CONTROL=10.0.0.5:29501 COMFYUI_PARALLEL_AUTHKEY_FILE=~/.comfyui_parallel/authkey-29501 \\
    COMFYUI_PARALLEL_DEVICE=cuda:0 COMFYUI_DIR=/path/to/ComfyUI \\
    python /path/to/ComfyUI/custom_nodes/ComfyUI-Parallel/parallel/worker_main.py

The same pack version must be installed there. The command never carries the group's authkey
(ComfyUI's log, where the node prints it, is served over HTTP): it names a key file, written
with mode 0600 at `key_file()` when the command is made; copy it to the same path on the other
machine, or set COMFYUI_PARALLEL_AUTHKEY there (and on the server, to fix the key); close()
removes the file. Remote workers retry connecting until start_timeout_s, so
they may be started before or after `group.start()`. Models reach remote workers as a file
path on a shared disk (shared memory is per machine: see shared_weights.py).
"""
import itertools
import os
import shlex
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..utils.errors import Cancelled, InputError, WorkerError
from .backend import group_backend
from .worker_procs import WORKER_MAIN, Session, loopback_interface
from .worker_runtime import WorkerContext

__all__ = ["WorkerGroupConfig", "WorkerGroup", "WorkerContext"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEY_DIR = Path.home() / ".comfyui_parallel"


@dataclass
class WorkerGroupConfig:
    """How to start a group. `devices` are local ("cpu", "cpu:1", "cuda:0", ...)."""

    devices: list[str]
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    threads_per_worker: int = 1
    comfyui_dir: str | None = None
    start_timeout_s: float = 120.0
    heartbeat_s: float = 1.0
    env: dict = field(default_factory=dict)
    remote_ranks: int = 0
    control_port: int = 0
    authkey: str | None = None
    heartbeat_timeout_s: float = 60.0
    stop_grace_s: float = 5.0

    def __post_init__(self):
        if isinstance(self.devices, str) or not self.devices and not self.remote_ranks:
            raise InputError("devices", f"{self.devices!r} is not a non-empty list of devices", "e.g. ['cpu', 'cpu']")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        allowed = "'cpu', 'cpu:N'" + (f", 'cuda:0'..'cuda:{gpus - 1}'" if gpus else " (no CUDA GPU here)")
        for text in self.devices:
            try:
                device = torch.device(text)
            except (RuntimeError, TypeError) as exc:
                raise InputError("devices", f"'{text}' is not a device", allowed) from exc
            if device.type == "cuda" and (device.index or 0) >= gpus:
                raise InputError("devices", f"'{text}' does not exist on this machine", allowed)
        if self.threads_per_worker < 1:
            raise InputError("threads_per_worker", f"{self.threads_per_worker} is below 1", "1 or more")
        if self.remote_ranks and not self.master_port:
            raise InputError("master_port", "must be set when remote_ranks > 0", "a free TCP port, e.g. 29500")

    @property
    def world_size(self) -> int:
        return len(self.devices) + self.remote_ranks

    @property
    def is_local(self) -> bool:
        return not self.remote_ranks and not self.master_port and self.master_addr in _LOOPBACK

    @property
    def control(self) -> tuple[str, int]:
        port = self.control_port or (self.master_port + 1 if self.master_port else 0)
        return self.master_addr, port


class WorkerGroup:
    """Start with `start()` (or `with`), run `call(...)` any number of times, `close()`."""

    def __init__(self, config: WorkerGroupConfig):
        self.config = config
        self._authkey = bytes.fromhex(config.authkey) if config.authkey else os.urandom(32)
        self._session: Session | None = None
        self._call_lock = threading.Lock()
        self._cancel_requested = threading.Event()
        self._call_ids = itertools.count(1)
        self._closed = False

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def pids(self) -> list[int]:
        """Process ids of the local workers, in rank order."""
        session = self._session
        return [session.procs[rank].pid for rank in sorted(session.procs)] if session else []

    def alive(self) -> bool:
        return self._session is not None and self._session.alive()

    def busy(self) -> bool:
        """Whether a call is running in the group now."""
        return self._call_lock.locked()

    def __enter__(self) -> "WorkerGroup":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "WorkerGroup":
        """Start the workers and wait until all joined the process group (no-op if running)."""
        if self.alive():
            return self
        self._end_session(graceful=False)
        self._closed = False
        try:
            session = Session(self.world_size, self.config.control, self._authkey)
        except OSError as exc:
            host, port = self.config.control
            raise InputError("control_port", f"cannot listen on {host}:{port}: {exc}",
                             "a free port on an address of this machine") from exc
        self._session = session
        self._finalizer = weakref.finalize(self, session.shutdown, False)  # no child outlives the caller
        try:
            rendezvous = session.make_store(self.config.master_addr, self.config.master_port,
                                            use_tcp=not self.config.is_local)
            for rank, device in enumerate(self.config.devices):
                session.spawn(rank, self._worker_env(rank, device, rendezvous, session.control_address))
            session.wait_started(self.config.start_timeout_s)
        except BaseException:
            self._end_session(graceful=False)
            raise
        return self

    def close(self) -> None:
        """End every worker (ask, then terminate, then kill) and free the group's resources."""
        self._closed = True
        self._end_session(graceful=True)
        self._key_path().unlink(missing_ok=True)

    def cancel(self) -> None:
        """Cancel the running call (from any thread): it raises Cancelled."""
        self._cancel_requested.set()

    def join_command(self, rank: int, device: str = "cuda:0", comfyui_dir: str = "/path/to/ComfyUI",
                     python: str = "python", worker_main: str | None = None) -> str:
        """The shell command that starts remote `rank` on another machine (worker_main: the
        pack's parallel/worker_main.py there, when its path differs from this machine's)."""
        first_remote = len(self.config.devices)
        if not first_remote <= rank < self.world_size:
            raise InputError("rank", f"{rank} is not a remote rank", f"{first_remote}..{self.world_size - 1}")
        host, port = self.config.control
        env = {
            "MASTER_ADDR": self.config.master_addr, "MASTER_PORT": str(self.config.master_port),
            **self._common_env(rank, rank - first_remote, device), "COMFYUI_PARALLEL_CONTROL": f"{host}:{port}",
            "COMFYUI_PARALLEL_AUTHKEY_FILE": str(self.key_file()), "COMFYUI_DIR": comfyui_dir,
            **self.config.env,  # what local workers get too (e.g. the server's ComfyUI flags)
        }
        assignments = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in env.items())
        return f"{assignments} {shlex.quote(python)} {shlex.quote(worker_main or str(WORKER_MAIN))}"

    def key_file(self) -> Path:
        """The group's authkey in a file only this user can read (mode 0600), for remote workers."""
        path = self._key_path()
        KEY_DIR.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self._authkey.hex())
        return path

    def _key_path(self) -> Path:
        return KEY_DIR / f"authkey-{self.config.control[1]}"

    def call(self, fn: str, *args, per_rank: list | None = None, on_progress: Callable | None = None,
             on_event: Callable | None = None, should_cancel: Callable | None = None,
             tasks: Iterable | None = None, **kwargs) -> list:
        """Run `fn(ctx, *args, **kwargs)` on every rank; the results in rank order.

        fn: "module.path:function" inside the pack. per_rank[rank] becomes ctx.rank_arg.
        on_progress(rank, done, total), on_event(rank, obj) run in this thread.
        should_cancel() is polled while waiting; True cancels (Cancelled is raised).
        tasks: items handed out one by one to whichever worker asks (ctx.next_task()).
        A group that is not running (never started, or ended by a failure) starts first.
        """
        if ":" not in fn:
            raise InputError("fn", f"'{fn}' is not 'module.path:function'", "a function inside the pack")
        if per_rank is not None and len(per_rank) != self.world_size:
            raise InputError("per_rank", f"has {len(per_rank)} items for {self.world_size} workers",
                             "one item per worker")
        if self._closed:
            raise RuntimeError("the worker group is closed")
        with self._call_lock:
            self.start()
            self._cancel_requested.clear()
            call_id = next(self._call_ids)
            for rank in range(self.world_size):
                self._session.send(rank, {"op": "call", "id": call_id, "fn": fn, "args": args, "kwargs": kwargs,
                                          "rank_arg": per_rank[rank] if per_rank is not None else None})
            callbacks = _Callbacks(on_progress, on_event, should_cancel, iter(tasks) if tasks is not None else None)
            return self._collect(call_id, callbacks)

    def _collect(self, call_id: int, callbacks: "_Callbacks") -> list:
        """Gather one call's results; on any failure stop the other ranks, then raise."""
        outcome = _Outcome(self.world_size)
        try:
            while not outcome.complete():
                if outcome.stop_deadline is None and (self._cancel_requested.is_set() or callbacks.cancelled()):
                    outcome.user_cancelled = True
                    self._request_stop(call_id, outcome)
                if self._stop_overdue(outcome):
                    break
                self._receive(call_id, outcome, callbacks)
        except WorkerError:
            self._end_session(graceful=False)  # a dead, silent or unreachable worker: the group is broken
            raise
        except BaseException:
            self._stop_quietly(call_id, outcome)  # e.g. a callback raised ComfyUI's interrupt
            raise
        return outcome.result()

    def _receive(self, call_id: int, outcome: "_Outcome", callbacks: "_Callbacks") -> None:
        item = self._session.next_message(0.05, self.config.heartbeat_timeout_s)
        if item is not None and item[1].get("id") == call_id:
            self._handle(call_id, item[0], item[1], outcome, callbacks)

    def _stop_overdue(self, outcome: "_Outcome") -> bool:
        """After a stop request: a rank that has not stopped within stop_grace_s is stuck in a
        collective its peers left; end the group (the next call starts a fresh one)."""
        if outcome.stop_deadline is None or time.monotonic() <= outcome.stop_deadline:
            return False
        self._end_session(graceful=False)
        return True

    def _stop_quietly(self, call_id: int, outcome: "_Outcome") -> None:
        """Stop the ranks after an exception in this process, keeping the group when they stop."""
        if self._session is None:
            return
        try:
            if outcome.stop_deadline is None:
                self._request_stop(call_id, outcome)
            while not outcome.complete() and not self._stop_overdue(outcome):
                self._receive(call_id, outcome, _Callbacks(None, None, None, None))
        except WorkerError:
            self._end_session(graceful=False)

    def _handle(self, call_id: int, rank: int, message: dict, outcome: "_Outcome", callbacks: "_Callbacks") -> None:
        op = message["op"]
        if op == "progress" and callbacks.on_progress:
            callbacks.on_progress(rank, message["done"], message["total"])
        elif op == "event" and callbacks.on_event:
            callbacks.on_event(rank, message["obj"])
        elif op == "need_task":
            self._session.send(rank, {"op": "task", "id": call_id, "item": callbacks.next_task()})
        elif op == "result":
            outcome.results[rank] = message["value"]
        elif op == "error":
            outcome.errors.append((rank, message))
            if outcome.stop_deadline is None:
                self._request_stop(call_id, outcome)

    def _request_stop(self, call_id: int, outcome: "_Outcome") -> None:
        self._session.broadcast({"op": "cancel", "id": call_id})
        outcome.stop_deadline = time.monotonic() + self.config.stop_grace_s

    def _end_session(self, graceful: bool) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._finalizer.detach()
            session.shutdown(graceful=graceful)

    def _backend(self, device: str) -> str:
        """The backend every rank joins: chosen from the local devices (a group of remote ranks only: from `device`)."""
        return group_backend([torch.device(d) for d in self.config.devices or [device]])

    def _common_env(self, rank: int, local_rank: int, device: str) -> dict:
        config = self.config
        return {
            "RANK": str(rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(local_rank),
            "COMFYUI_PARALLEL_DEVICE": device, "COMFYUI_PARALLEL_BACKEND": self._backend(device),
            "COMFYUI_PARALLEL_THREADS": str(config.threads_per_worker),
            "COMFYUI_PARALLEL_HEARTBEAT_S": str(config.heartbeat_s),
            "COMFYUI_PARALLEL_START_TIMEOUT_S": str(config.start_timeout_s),
        }

    def _worker_env(self, rank: int, device: str, rendezvous: dict, control: tuple[str, int]) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.config.threads_per_worker), **rendezvous,
               **self._common_env(rank, rank, device), "COMFYUI_PARALLEL_CONTROL": f"{control[0]}:{control[1]}",
               "COMFYUI_PARALLEL_AUTHKEY": self._authkey.hex()}  # local children only, never printed
        if self.config.comfyui_dir:
            env["COMFYUI_DIR"] = str(self.config.comfyui_dir)
        if self.config.is_local and sys.platform != "win32":
            interface = loopback_interface()
            if interface:
                env.setdefault("GLOO_SOCKET_IFNAME", interface)
                env.setdefault("NCCL_SOCKET_IFNAME", interface)
        env.update({key: str(value) for key, value in self.config.env.items()})
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


@dataclass
class _Callbacks:
    on_progress: Callable | None
    on_event: Callable | None
    should_cancel: Callable | None
    tasks: Iterable | None

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def next_task(self):
        return next(self.tasks, None) if self.tasks is not None else None


@dataclass
class _Outcome:
    world_size: int
    results: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    stop_deadline: float | None = None
    user_cancelled: bool = False

    def complete(self) -> bool:
        return len(self.results) + len(self.errors) >= self.world_size

    def result(self) -> list:
        """The results in rank order, or the first real error, or Cancelled."""
        for rank, message in self.errors:
            if not message["cancelled"]:
                raise WorkerError(rank, message["message"], message["traceback"])
        if self.errors or self.user_cancelled:
            raise Cancelled("cancelled: every worker stopped")
        return [self.results[rank] for rank in range(self.world_size)]
