"""The worker side of a WorkerGroup: settings, the context a worker function gets, the serve loop.

A worker process (started by parallel/worker_main.py, locally or on another machine) connects
to the caller's command channel, joins the torch.distributed group and then runs calls one at
a time: `fn(ctx, *args, **kwargs)` where `fn` is a "module.path:function" inside the pack.

Three threads: the main thread runs calls; a receiver thread reads the channel (so cancel,
task hand-out and close arrive while a call runs); a heartbeat thread tells the caller the
process is alive. When the caller's connection drops, the worker exits at once: no orphans.

Messages are pickled dicts of plain data and tensors (CPU tensors: results are moved to the
CPU before sending). Pack classes do not travel by class name, because the pack's module
name differs between the server (its folder name) and a worker (`comfyui_parallel`); the
one pack object that travels, SharedWeights, goes as a plain spec (see `encode`).
Decoding runs no code a message names: besides tensors and SharedWeights (persistent ids,
rebuilt by this module) a message may hold only builtin containers and scalars, torch dtypes,
torch.device and torch.Size; any other class or function it names is refused (in both
directions, so neither a worker nor a peer holding the authkey can run code in the server).
"""
import importlib
import io
import os
import pickle
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..utils.errors import Cancelled
from .backend import group_backend, init_options
from .shared_weights import SharedWeights

PACK_PREFIX = __name__.rsplit(".", 2)[0]
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
_SHARED_WEIGHTS_TAG = "comfyui_parallel.SharedWeights"
_TENSOR_TAG = "comfyui_parallel.Tensor"


def _plain_tensor(obj) -> bool:
    return type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.layout == torch.strided and not obj.is_quantized


class _Pickler(pickle.Pickler):
    """SharedWeights travel as a plain spec (the receiver rebuilds them with its own class);
    tensors as their raw bytes (one copy, no torch.save per storage: ~10x faster than
    torch's default pickling for MiB-sized tensors, and only a view's own elements)."""

    def persistent_id(self, obj):
        if isinstance(obj, SharedWeights):
            return (_SHARED_WEIGHTS_TAG, obj.spec())
        if isinstance(obj, torch.Tensor) and _plain_tensor(obj):
            tensor = obj.detach().cpu().contiguous()
            raw = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
            return (_TENSOR_TAG, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape),
                    pickle.PickleBuffer(raw) if len(raw) else bytearray())
        return None


_SAFE_GLOBALS = {("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "slice", "complex",
                                                 "bytes", "bytearray", "int", "float", "str", "bool", "range")}
_SAFE_GLOBALS |= {("collections", "OrderedDict"), ("torch", "device"), ("torch", "Size")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        """Only the data types messages carry; never a class or function a sender chose."""
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"message refused: it names {module}.{name}, which messages may not carry")

    def persistent_load(self, pid):
        if pid[0] == _SHARED_WEIGHTS_TAG:
            return SharedWeights.from_spec(pid[1])
        if pid[0] == _TENSOR_TAG:
            _, dtype_name, shape, data = pid
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype):
                raise pickle.UnpicklingError(f"message refused: {dtype_name!r} is not a torch dtype")
            if not len(data):
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(data, dtype=torch.uint8).view(dtype).view(shape)
        raise pickle.UnpicklingError(f"unknown persistent object {pid[0]!r}")


def encode(obj) -> bytes:
    """Pickle a message (plain pickle, not multiprocessing's: torch registers shared-memory
    reductions there that only work between multiprocessing-started processes)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def decode(data: bytes):
    """Unpickle a message produced by `encode`."""
    return _Unpickler(io.BytesIO(data)).load()


class Channel:
    """A multiprocessing Connection with a send lock (several threads send) and our pickling."""

    def __init__(self, conn):
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, obj) -> None:
        self.send_bytes(encode(obj))

    def send_bytes(self, data: bytes) -> None:
        with self._lock:
            self.conn.send_bytes(data)

    def recv(self):
        return decode(self.conn.recv_bytes())

    def close(self) -> None:
        self.conn.close()


def to_cpu(obj):
    """Nested dicts / lists / tuples with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def resolve_function(path: str):
    """'parallel.seq_worker:run_step' -> the function, imported from inside the pack."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"fn: '{path}' is not 'module.path:function' (a module inside the pack)")
    module = importlib.import_module(f"{PACK_PREFIX}.{module_name.lstrip('.')}")
    return getattr(module, attr)


@dataclass
class WorkerSettings:
    """What a worker needs to join, read from torchrun-style environment variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    control: tuple[str, int]
    authkey: bytes
    device: str
    backend: str = ""
    threads: int = 1
    store_path: str = ""
    heartbeat_s: float = 1.0
    start_timeout_s: float = 120.0

    @classmethod
    def from_environ(cls, env=os.environ) -> "WorkerSettings":
        host, _, port = env["COMFYUI_PARALLEL_CONTROL"].rpartition(":")
        local_rank = int(env.get("LOCAL_RANK", "0"))
        default_device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        return cls(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=local_rank,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", "0")),
            control=(host, int(port)), authkey=bytes.fromhex(env["COMFYUI_PARALLEL_AUTHKEY"]),
            device=env.get("COMFYUI_PARALLEL_DEVICE", default_device),
            backend=env.get("COMFYUI_PARALLEL_BACKEND", ""),
            threads=int(env.get("COMFYUI_PARALLEL_THREADS", "1")),
            store_path=env.get("COMFYUI_PARALLEL_STORE", ""),
            heartbeat_s=float(env.get("COMFYUI_PARALLEL_HEARTBEAT_S", "1.0")),
            start_timeout_s=float(env.get("COMFYUI_PARALLEL_START_TIMEOUT_S", "120")),
        )


class WorkerContext:
    """What a worker function gets as `ctx`: its rank, device, group, persistent state and the
    caller's services (progress, events, the dynamic task queue, cancellation)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, channel: Channel):
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.state: dict = {}
        self.rank_arg = None
        self._channel = channel
        self._call_id = None
        self._cancelled_id = None
        self._tasks: queue.Queue = queue.Queue()

    @property
    def group(self):
        """The torch.distributed default group (gloo on the CPU, nccl for CUDA tensors)."""
        return dist.group.WORLD

    def progress(self, done: int, total: int) -> None:
        """Report progress; the caller's on_progress(rank, done, total) receives it."""
        self._channel.send({"op": "progress", "id": self._call_id, "done": done, "total": total})

    def event(self, obj) -> None:
        """Send plain data / tensors to the caller's on_event(rank, obj)."""
        self._channel.send({"op": "event", "id": self._call_id, "obj": to_cpu(obj)})

    def next_task(self):
        """The next item of the caller's `tasks`, or None when they are used up.

        Workers ask when they are ready, so faster workers take more items.
        """
        self.check_cancelled()
        self._channel.send({"op": "need_task", "id": self._call_id})
        while True:
            try:
                message = self._tasks.get(timeout=0.1)
            except queue.Empty:
                self.check_cancelled()
                continue
            if message["id"] == self._call_id:
                return message["item"]

    def check_cancelled(self, sync: bool = False) -> None:
        """Raise Cancelled when the caller cancelled this call.

        Ranks see a cancel at slightly different moments. In lock-step loops (every rank runs
        the same collectives each step) pass sync=True: the ranks agree by an all-reduce, so
        they all stop at the same step and the group stays usable. Without it a rank may wait
        in a collective its peers left; the caller then ends and restarts the group.
        """
        flag = self._cancelled_id is not None and self._cancelled_id == self._call_id
        if sync and self.world_size > 1:
            agreed = torch.tensor([int(flag)])
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            flag = bool(agreed.item())
        if flag:
            raise Cancelled(f"worker {self.rank}: cancelled")

    def _begin(self, call_id, rank_arg) -> None:
        self._call_id = call_id
        self.rank_arg = rank_arg


def _receive(channel: Channel, ctx: WorkerContext, calls: queue.Queue) -> None:
    """Reader thread: route call / cancel / task / close messages; exit if the caller is gone."""
    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError):
            os._exit(3)
        op = message["op"]
        if op == "call":
            calls.put(message)
        elif op == "cancel":
            ctx._cancelled_id = message["id"]
        elif op == "task":
            ctx._tasks.put(message)
        elif op == "close":
            calls.put(None)
            return


def _heartbeat(channel: Channel, interval: float) -> None:
    while True:
        time.sleep(interval)
        try:
            channel.send({"op": "heartbeat"})
        except (OSError, ValueError):
            return


def _run_call(ctx: WorkerContext, channel: Channel, message: dict) -> None:
    """Run one call and send its result, or its error with the traceback."""
    ctx._begin(message["id"], message.get("rank_arg"))
    try:
        fn = resolve_function(message["fn"])
        value = fn(ctx, *message["args"], **message["kwargs"])
        payload = encode({"op": "result", "id": message["id"], "value": to_cpu(value)})
    except Exception as exc:  # every failure goes back to the caller with its traceback
        payload = encode({
            "op": "error", "id": message["id"], "cancelled": isinstance(exc, Cancelled),
            "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
        })
    channel.send_bytes(payload)


def _init_group(settings: WorkerSettings) -> torch.device:
    """Join the torch.distributed group with the launcher's backend (or, unnamed, the one for this device alone)."""
    device = torch.device(settings.device)
    backend = settings.backend or group_backend([device])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if settings.store_path:
        store = dist.FileStore(settings.store_path, settings.world_size)
    else:
        store = dist.TCPStore(settings.master_addr, settings.master_port, is_master=False,
                              timeout=timedelta(seconds=settings.start_timeout_s))
    dist.init_process_group(backend, store=store, rank=settings.rank, world_size=settings.world_size,
                            timeout=COLLECTIVE_TIMEOUT, **init_options(backend, device))
    return device


def run_worker(settings: WorkerSettings, conn) -> int:
    """A worker's life after worker_main connected and said hello: join the group, serve
    calls until close. A failure on the way reaches the caller as a fatal message."""
    channel = Channel(conn)
    try:
        torch.set_num_threads(settings.threads)
        device = _init_group(settings)
        ctx = WorkerContext(settings.rank, settings.world_size, device, channel)
        calls: queue.Queue = queue.Queue()
        threading.Thread(target=_receive, args=(channel, ctx, calls), daemon=True).start()
        threading.Thread(target=_heartbeat, args=(channel, settings.heartbeat_s), daemon=True).start()
        channel.send({"op": "ready", "rank": settings.rank})
        while (message := calls.get()) is not None:
            _run_call(ctx, channel, message)
    except Exception as exc:  # start-up failures reach the caller instead of dying silently
        channel.send({"op": "fatal", "message": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()})
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
