"""Model weights in shared memory, and rebuilding a module from them in a worker.

The caller (ComfyUI's server, which loaded the checkpoint with its own loader) copies a
state dict once into one `multiprocessing.shared_memory` block; workers on the same machine
open it zero-copy: their tensors are views of the same pages, so N workers cost one copy
of the weights, not N. (torch's own tensor sharing passes file descriptors between processes
that multiprocessing started; our workers start from their own entry point and talk over a
socket, so a named block they attach to by name is the mechanism that fits.)

Across machines there is no shared memory: pass a safetensors file path instead, and the
worker loads it with `load_weights` (memory-mapped).

Opened tensors are writable views of the shared pages: a worker that patches weights in place
changes them for everyone. Copy first (`t.clone()`) where a worker needs its own weights.
"""
import ctypes
import ctypes.util
import importlib
import shutil
import sys
import weakref
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..utils.errors import InputError

ALIGN = 64
SHM_DIR = Path("/dev/shm")
_CREATED: set[str] = set()  # blocks this process created (and its resource tracker covers)


@dataclass
class TensorEntry:
    """Where one tensor lives in the block."""

    name: str
    dtype: str
    shape: tuple
    offset: int
    nbytes: int


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _check_space(size: int) -> None:
    """Refuse early when /dev/shm is too small (writing past it would crash with SIGBUS)."""
    if not SHM_DIR.is_dir():
        return
    free = shutil.disk_usage(SHM_DIR).free
    if size > free:
        raise InputError(
            "weights", f"need {size / 2**30:.2f} GiB of shared memory but {SHM_DIR} has "
            f"{free / 2**30:.2f} GiB free", "a larger /dev/shm (docker: --shm-size) or a weights file path")


class SharedWeights:
    """A picklable handle over a state dict in shared memory.

    The creating process owns the block: `release()` (or garbage collection of the owner's
    handle, or interpreter exit) unlinks it. Workers' handles only detach.
    """

    def __init__(self, shm_name: str, size: int, entries: list[TensorEntry]):
        self.shm_name = shm_name
        self.size = size
        self.entries = entries
        self._buf: memoryview | None = None
        self._finalizer = None

    def spec(self) -> dict:
        """Plain-data form (for messages between processes whose pack module names differ)."""
        return {"shm_name": self.shm_name, "size": self.size, "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_spec(cls, spec: dict) -> "SharedWeights":
        entries = [TensorEntry(**{**entry, "shape": tuple(entry["shape"])}) for entry in spec["entries"]]
        return cls(spec["shm_name"], spec["size"], entries)

    def __reduce__(self):
        return (SharedWeights.from_spec, (self.spec(),))

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)

    def open(self) -> dict[str, torch.Tensor]:
        """The state dict as zero-copy views of the shared block."""
        buf = self._attach()
        tensors = {}
        for entry in self.entries:
            dtype = _dtype(entry.dtype)
            numel = entry.nbytes // torch.empty((), dtype=dtype).element_size()
            if numel == 0:
                tensors[entry.name] = torch.empty(entry.shape, dtype=dtype)
                continue
            flat = torch.frombuffer(buf, dtype=dtype, count=numel, offset=entry.offset)
            tensors[entry.name] = flat.view(entry.shape)
        return tensors

    def release(self) -> None:
        """Owner: unlink the block's name. Everyone: drop this handle's mapping.

        The memory itself is unmapped when the last tensor viewing it is freed, never before.
        """
        self._buf = None
        if self._finalizer is not None:
            self._finalizer()

    def _attach(self) -> memoryview:
        if self._buf is None:
            self._buf = _detach_mapping(_attach_untracked(self.shm_name))
        return self._buf


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without leaving the block to this process's resource tracker, which would
    unlink it when this (worker) process exits; only the owner unlinks it."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    shm = shared_memory.SharedMemory(name=name)
    if shm._name not in _CREATED:
        resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def _detach_mapping(shm: shared_memory.SharedMemory) -> memoryview:
    """Take the mapping out of `shm` so its close() (run by its __del__) cannot unmap memory
    that tensors still view: torch.frombuffer keeps the buffer object alive, not mapped, so
    the lifetime must follow the memoryview's references alone."""
    buf = shm._buf
    shm._buf = shm._mmap = None
    shm.close()  # closes the file descriptor only
    return buf


def _unlink(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[TensorEntry], int]:
    entries, offset = [], 0
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            raise InputError("state_dict", f"'{name}' is not a tensor with data", "real tensors (not meta)")
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(TensorEntry(name, str(tensor.dtype), tuple(tensor.shape), offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, offset


def share_state_dict(state_dict: Mapping[str, torch.Tensor]) -> SharedWeights:
    """Copy a state dict into one new shared-memory block; returns the owner's handle."""
    entries, size = _layout(state_dict)
    _check_space(size)
    shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
    handle = SharedWeights(shm.name, size, entries)
    _CREATED.add(shm._name)
    handle._buf = _detach_mapping(shm)
    handle._finalizer = weakref.finalize(handle, _unlink, shm)
    for entry, tensor in zip(entries, state_dict.values()):
        if entry.nbytes:
            target = torch.frombuffer(handle._buf, dtype=torch.uint8, count=entry.nbytes, offset=entry.offset)
            target.copy_(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8))
    return handle


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (memory-mapped), for workers given a path instead."""
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise InputError("weights", f"'{file}' is not a file", "a safetensors file every worker can read")
    return load_file(str(file))


def import_object(path: str):
    """'package.module:Name' -> the object ('.models.x:Name' is inside this pack)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise InputError("class_path", f"'{path}' is not 'module:Class'", "e.g. 'comfy.ldm.wan.model:WanModel'")
    if module_name.startswith("."):
        module_name = __name__.rsplit(".", 2)[0] + module_name
    return getattr(importlib.import_module(module_name), attr)


def _has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


def rebuild_module(class_path: str, config: dict, weights, device: str | torch.device = "cpu",
                   strict: bool = True) -> nn.Module:
    """Build `Class(**config)` and give it `weights` (SharedWeights, a state dict or a file path).

    The module is built on the meta device and takes the weights by assignment (zero-copy for
    shared weights on the CPU). A class whose __init__ computes buffers that are not in the
    state dict is built for real instead, so those buffers exist.
    """
    cls = import_object(class_path)
    if isinstance(weights, SharedWeights):
        state = weights.open()
    elif isinstance(weights, (str, Path)):
        state = load_weights(weights)
    else:
        state = dict(weights)
    with torch.device("meta"):
        module = cls(**config)
    module.load_state_dict(state, strict=strict, assign=True)
    if _has_meta(module):
        module = cls(**config)
        module.load_state_dict(state, strict=strict, assign=True)
    return module.to(device).eval()


def move_into(module: nn.Module, weights: SharedWeights) -> int:
    """Point `module`'s CPU tensors at their copies in `weights`, in place (the same Parameter and buffer
    objects, their data replaced), so the caller's model and the workers map the same pages and the
    caller's private copy is freed. Tensors elsewhere (a GPU) or of another shape / dtype keep theirs.
    Returns the bytes now held in shared memory."""
    views = weights.open()
    moved = 0
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        view = views.get(name)
        if (view is None or tensor.device.type != "cpu" or view.dtype != tensor.dtype
                or view.shape != tensor.shape or view.data_ptr() == tensor.data_ptr()):
            continue
        tensor.data = view
        moved += view.numel() * view.element_size()
    if moved:
        return_freed_memory()
    return moved


def return_freed_memory() -> None:
    """Give the pages of freed tensors back to the system now. glibc keeps freed heap memory for reuse
    (all but its top), so a private copy replaced by shared memory would still count as held; its
    malloc_trim releases every free page. Elsewhere (another C library) nothing happens."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
