"""The caller's side of one running worker group: processes, channels, rendezvous, reader.

`Session` is everything one `WorkerGroup.start()` creates and `close()` ends: the command
channel listener, the rendezvous store, the local worker processes, one authenticated channel
per rank and a reader thread that turns incoming messages (and lost connections) into a
queue the call loop consumes. Kept apart from launch.py so that file holds the public API.

Each incoming connection is authenticated (the group's authkey, both ways) and must say
hello with a rank of this group within HELLO_TIMEOUT_S, in a thread of its own: a client
that connects and stays silent, or fails the handshake, cannot stall the others.
"""
import os
import pickle
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from multiprocessing.connection import AuthenticationError, Listener, answer_challenge, deliver_challenge, wait
from pathlib import Path

import psutil

from ..utils.errors import InputError, WorkerError
from .worker_runtime import Channel, decode

WORKER_MAIN = Path(__file__).resolve().parent / "worker_main.py"
CLOSE_WAIT_S = 5.0
HELLO_TIMEOUT_S = 10.0


def loopback_interface() -> str | None:
    """The network interface holding 127.0.0.1 ('lo' on Linux), to keep gloo / nccl local."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == "127.0.0.1" for address in addresses):
            return name
    return None


def describe_exit(returncode: int | None) -> str:
    """'killed by signal SIGKILL' / 'exited with code 1' / 'lost its connection'."""
    if returncode is None:
        return "lost its connection"
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Session:
    """Resources of one started group. `shutdown()` is idempotent and safe at exit."""

    def __init__(self, world_size: int, control: tuple[str, int], authkey: bytes):
        self.world_size = world_size
        self.listener = Listener(control)  # authenticated per connection, off the accept thread
        self._authkey = authkey
        self._pending: set = set()
        self.procs: dict[int, subprocess.Popen] = {}
        self.channels: dict[int, Channel] = {}
        self.hellos: dict[int, dict] = {}
        self.last_seen: dict[int, float] = {}
        self.lost: set[int] = set()
        self.messages: queue.Queue = queue.Queue()
        self.store = None
        self.store_dir: str | None = None
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._accepted: queue.Queue = queue.Queue()
        self._accepting = threading.Event()
        self._accepting.set()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def control_address(self) -> tuple[str, int]:
        return self.listener.address

    def make_store(self, master_addr: str, master_port: int, use_tcp: bool) -> dict:
        """The rendezvous: a TCPStore for multi-machine groups, else a FileStore.

        Given a host, torch's TCPStore still listens on every interface, so the pack binds
        the socket itself (to master_addr only) and hands it over; a group that stays on this
        machine uses a file in a private temporary folder instead. Returns the environment
        variables that point workers at it.
        """
        import torch.distributed as dist

        if use_tcp:
            try:
                listening = socket.create_server((master_addr, master_port), backlog=128)
                port = listening.getsockname()[1]
                self.store = dist.TCPStore(master_addr, port, None, True, timeout=timedelta(seconds=60),
                                           wait_for_workers=False, master_listen_fd=listening.detach())
            except (RuntimeError, OSError) as exc:
                raise InputError("master_port", f"cannot host the rendezvous on {master_addr}:{master_port}: {exc}",
                                 "a free port on an address of this machine") from exc
            return {"MASTER_ADDR": master_addr, "MASTER_PORT": str(self.store.port)}
        self.store_dir = tempfile.mkdtemp(prefix="comfyui_parallel_")
        path = os.path.join(self.store_dir, "rendezvous")
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0", "COMFYUI_PARALLEL_STORE": path}

    def spawn(self, rank: int, env: dict) -> None:
        """Start a local worker from its own entry point (not multiprocessing: see DESIGN.md)."""
        self.procs[rank] = subprocess.Popen([sys.executable, str(WORKER_MAIN)], env=env, stdin=subprocess.DEVNULL)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except Exception:  # closed, or a client with the wrong key: refused
                if self._accepting.is_set():
                    continue
                return
            if not self._accepting.is_set():
                conn.close()
                return
            self._pending.add(conn)
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn) -> None:
        """Authenticate one connection and read its hello; a valid one is queued, anything else closed."""
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            hello = decode(conn.recv_bytes()) if conn.poll(HELLO_TIMEOUT_S) else None
        except (AuthenticationError, EOFError, OSError, ValueError, pickle.UnpicklingError):
            hello = None
        finally:
            self._pending.discard(conn)
        if self.valid_hello(hello) and self._accepting.is_set():
            self._accepted.put((conn, hello))
        else:
            conn.close()

    def valid_hello(self, hello) -> bool:
        """A hello naming a rank of this group (an int in range) that has not joined yet."""
        rank = hello.get("rank") if isinstance(hello, dict) and hello.get("op") == "hello" else None
        return type(rank) is int and 0 <= rank < self.world_size and rank not in self.channels

    def wait_started(self, timeout_s: float) -> None:
        """Wait for every rank's hello and ready; raise WorkerError on a death, failure or timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.channels) < self.world_size:
            self.check_processes()
            self._check_deadline(deadline, "did not connect")
            try:
                conn, hello = self._accepted.get(timeout=0.1)
            except queue.Empty:
                continue
            if not self.valid_hello(hello):  # a second hello for a rank that joined meanwhile
                conn.close()
                continue
            self.channels[hello["rank"]] = Channel(conn)
            self.hellos[hello["rank"]] = hello
        self._stop_accepting()
        self._start_reader()
        ready = set()
        while len(ready) < self.world_size:
            self._check_deadline(deadline, "did not join the process group")
            item = self.next_message(0.1, heartbeat_timeout_s=None)
            if item and item[1]["op"] == "ready":
                ready.add(item[0])

    def _stop_accepting(self) -> None:
        """Stop the accept thread (a blocked accept() is woken by a last connection), close."""
        if self._accepting.is_set():
            self._accepting.clear()
            try:
                socket.create_connection(self.listener.address, timeout=1.0).close()
            except OSError:
                pass
            self._acceptor.join(timeout=2.0)
        self.listener.close()
        for conn in list(self._pending):  # silent clients: their handshake threads end here
            conn.close()
        while not self._accepted.empty():
            self._accepted.get()[0].close()

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            missing = sorted(set(range(self.world_size)) - set(self.channels))
            rank = missing[0] if missing else 0
            raise WorkerError(rank, f"{what} within the start timeout (ranks missing: {missing or 'none'})")

    def _start_reader(self) -> None:
        now = time.monotonic()
        self.last_seen = {rank: now for rank in self.channels}
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        """Reader thread: every message (and every lost connection) into `messages`."""
        ranks = {channel.conn: rank for rank, channel in self.channels.items()}
        while ranks and not self._stop.is_set():
            for conn in wait(list(ranks), timeout=0.2):
                rank = ranks[conn]
                try:
                    message = decode(conn.recv_bytes())
                except (EOFError, OSError):
                    del ranks[conn]
                    self.lost.add(rank)
                    self.messages.put((rank, {"op": "dead"}))
                    continue
                self.last_seen[rank] = time.monotonic()
                if message["op"] != "heartbeat":
                    self.messages.put((rank, message))

    def next_message(self, timeout: float, heartbeat_timeout_s: float | None):
        """(rank, message) or None; raises WorkerError for a dead, failed or silent worker."""
        self.check_processes()
        if heartbeat_timeout_s is not None:
            self._check_heartbeats(heartbeat_timeout_s)
        try:
            rank, message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if message["op"] == "dead":
            raise WorkerError(rank, f"worker process {self.describe_rank(rank)}")
        if message["op"] == "fatal":
            raise WorkerError(rank, f"failed to start: {message['message']}", message["traceback"])
        return rank, message

    def describe_rank(self, rank: int) -> str:
        """'(pid 123) was killed by signal SIGKILL' for a local rank; remote: lost connection."""
        proc = self.procs.get(rank)
        if proc is None:
            return "on another machine lost its connection"
        try:
            returncode = proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            returncode = None
        return f"(pid {proc.pid}) {describe_exit(returncode)}"

    def check_processes(self) -> None:
        for rank, proc in self.procs.items():
            if proc.poll() is not None:
                raise WorkerError(rank, f"worker process {self.describe_rank(rank)}")

    def _check_heartbeats(self, timeout_s: float) -> None:
        now = time.monotonic()
        for rank, seen in self.last_seen.items():
            if now - seen > timeout_s:
                raise WorkerError(rank, f"no heartbeat for {now - seen:.0f} s (the worker or its machine hangs)")

    def send(self, rank: int, message: dict) -> None:
        try:
            self.channels[rank].send(message)
        except (OSError, ValueError) as exc:
            raise WorkerError(rank, f"cannot reach the worker: {exc}") from exc

    def broadcast(self, message: dict) -> None:
        """Send to every rank, ignoring ranks already gone."""
        for channel in list(self.channels.values()):
            try:
                channel.send(message)
            except (OSError, ValueError):
                pass

    def alive(self) -> bool:
        return not self.lost and all(proc.poll() is None for proc in self.procs.values())

    def shutdown(self, graceful: bool = True) -> None:
        """End every child: ask, then terminate, then kill; free channel, store and files."""
        if graceful:
            self.broadcast({"op": "close"})
        deadline = time.monotonic() + (CLOSE_WAIT_S if graceful else 0.0)
        for proc in self.procs.values():
            _end_process(proc, deadline)
        self._stop.set()
        self._stop_accepting()
        for channel in self.channels.values():
            channel.close()
        self.store = None
        if self.store_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)


def _end_process(proc: subprocess.Popen, deadline: float) -> None:
    for stop in (None, proc.terminate, proc.kill):
        if stop is not None and proc.poll() is None:
            stop()
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()) if stop is None else 2.0)
            return
        except subprocess.TimeoutExpired:
            continue
