"""Data parallelism: one replica of a module per device, each call's batch split over them.

Every tensor argument whose first dimension equals the batch size (x, timestep, context,
extra conditions; nested in tuples / lists / dicts too) is cut along dim 0 into per-device
chunks, proportional to `weights` for unequal GPUs. The chunks run at once in threads (torch
releases the GIL inside its kernels) and the outputs are gathered in order on the main
device. A batch of 1 runs on the main device alone.

Whether the source weights changed is the caller's `identity()` (for a ComfyUI model: the
patches its load applied, models/comfy/patcher.py `weights_identity`), never tensor addresses,
which the allocator hands again to a re-patched tensor of the same size. On a change the
replicas take the new values by copying into their existing tensors, so a refresh needs no
second set of replicas (a 14B model's replicas are tens of GiB per GPU).
"""
import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

import torch
from torch import nn

from .devices import same_device
from .placement import append_bounded, first_tensor_device, move_to


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `module` by name."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _layout(module: nn.Module) -> list[tuple]:
    """(name, shape, dtype) of every tensor: replicas of the same layout can take new values in place."""
    return [(name, tuple(t.shape), t.dtype) for name, t in _tensors(module).items()]


def copy_values(source: nn.Module, replica: nn.Module) -> None:
    """The source's current tensor values written into the replica's own tensors (no new allocation)."""
    values = _tensors(source)
    inference = any(t.is_inference() for t in _tensors(replica).values())
    with torch.inference_mode(inference), torch.no_grad():
        for name, tensor in _tensors(replica).items():
            tensor.copy_(values[name])


def copy_to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of `module` whose tensors are created directly on `device` (no transient copy)."""
    memo = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(param.detach().to(device, copy=True), requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer.detach().to(device, copy=True)
    return copy.deepcopy(module, memo)


def split_sizes(batch: int, weights: list[float]) -> list[int]:
    """Rows per device for `batch` rows, proportional to weights (largest remainder, in order)."""
    total = float(sum(weights))
    exact = [batch * w / total for w in weights]
    sizes = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: batch - sum(sizes)]:
        sizes[i] += 1
    return sizes


def split_batch(obj, batch: int, sizes: list[int]) -> list:
    """`obj` cut into len(sizes) pieces: tensors with dim0 == batch are sliced, the rest shared.

    Every piece gets dicts of its own: the replicas run at once, and ComfyUI's models write into
    the dicts they are given (the UNet sets transformer_options' block / index / original_shape).
    """
    if isinstance(obj, torch.Tensor) and obj.dim() > 0 and obj.shape[0] == batch:
        return list(torch.split(obj, sizes, dim=0))
    if isinstance(obj, dict):
        parts = {key: split_batch(value, batch, sizes) for key, value in obj.items()}
        return [_copy_dict(obj, {key: parts[key][i] for key in obj}) for i in range(len(sizes))]
    if isinstance(obj, (list, tuple)):
        parts = [split_batch(item, batch, sizes) for item in obj]
        return [_rebuild_sequence(obj, [p[i] for p in parts]) for i in range(len(sizes))]
    return [obj] * len(sizes)


def _copy_dict(original: dict, values: dict) -> dict:
    rebuilt = original.copy()
    rebuilt.update(values)
    return rebuilt


def _rebuild_sequence(original, items: list):
    if all(new is old for new, old in zip(items, original)):
        return original
    return type(original)(*items) if hasattr(original, "_fields") else type(original)(items)


def gather(outputs: list, device: torch.device):
    """Per-chunk outputs joined in order on `device`: tensors concatenated along dim 0."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        parts = [move_to(o, device) for o in outputs]
        return torch.cat(parts, dim=0) if first.dim() > 0 else torch.stack(parts)
    if isinstance(first, dict):
        return type(first)({key: gather([o[key] for o in outputs], device) for key in first})
    if isinstance(first, (list, tuple)):
        items = [gather([o[i] for o in outputs], device) for i in range(len(first))]
        return _rebuild_sequence(first, items) if isinstance(first, tuple) else items
    return first


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    """Rows of the first tensor argument (positional first, then keyword), None without one."""
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


class DataParallel:
    """A replica of `module` on each device; calls split the batch over them and gather in order.

    Replica 0 is the source module itself when it already sits on devices[0]. `identity`, when
    given, is asked before every call; a new value refreshes the replicas (without one, call
    `refresh()` after changing the source weights). `ran_on`
    records (replica index, device, rows) for every chunk run, the engine's own proof of
    which device ran what (simulated cpu devices cannot be told apart from tensors).
    """

    def __init__(self, module: nn.Module, devices: list[torch.device], weights: list[float] | None = None,
                 identity: Callable[[], Hashable] | None = None):
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        if weights is not None and (len(weights) != len(devices) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights {weights} must be {len(devices)} non-negative numbers, not all zero")
        self.module = module
        self.devices = [torch.device(d) for d in devices]
        self.weights = list(weights) if weights is not None else [1.0] * len(devices)
        self.replicas: list[nn.Module] = []
        self.ran_on: list = []
        self.identity = identity
        self._identity = None
        self._layout = None
        self._pool: ThreadPoolExecutor | None = None
        self.refresh()

    def refresh(self) -> None:
        """Give every replica the source module's current weights: copied into the replicas in place
        when the layout (names, shapes, dtypes) is unchanged, else the old replicas dropped, new ones built."""
        layout = _layout(self.module)
        if self.replicas and layout == self._layout:
            for replica in self.replicas:
                if replica is not self.module:
                    copy_values(self.module, replica)
        else:
            self.replicas = []
            self.replicas = [self._replica(i, device) for i, device in enumerate(self.devices)]
        self._layout = layout
        self._identity = self.identity() if self.identity is not None else None

    def _replica(self, index: int, device: torch.device) -> nn.Module:
        """The source module itself as replica 0 when it sits on devices[0], else a copy on `device`."""
        source_device = first_tensor_device(self.module)
        if index == 0 and (source_device is None or same_device(source_device, device)):
            return self.module
        return copy_to_device(self.module, device)

    def refresh_if_changed(self) -> bool:
        """Refresh when `identity()` differs from its value at the last refresh (never without an identity)."""
        if self.identity is None or self.identity() == self._identity:
            return False
        self.refresh()
        return True

    def forward(self, *args, **kwargs):
        """The module's forward over the split batch, gathered on devices[0]."""
        return self.call(lambda replica, *a, **k: replica(*a, **k), *args, **kwargs)

    __call__ = forward

    def call(self, fn: Callable, *args, **kwargs):
        """fn(replica, *chunk_args, **chunk_kwargs) per device, gathered: for entry points other than forward."""
        self.refresh_if_changed()
        batch = _batch_size(args, kwargs)
        if batch is None or batch < 2 or len(self.devices) == 1:
            return self._run(fn, 0, args, kwargs, batch)
        sizes = split_sizes(batch, self.weights)
        pieces = split_batch((args, kwargs), batch, sizes)
        jobs = [(i, pieces[i]) for i in range(len(sizes)) if sizes[i] > 0]
        modes = _thread_modes()
        pool = self._executor()
        futures = [pool.submit(_with_modes, modes, self._run, fn, i, a, k, sizes[i]) for i, (a, k) in jobs]
        return gather([f.result() for f in futures], self.devices[0])

    def _run(self, fn: Callable, index: int, args, kwargs, rows):
        """One chunk on replica `index`: inputs moved to its device, output back on devices[0]."""
        device = self.devices[index]
        append_bounded(self.ran_on, (index, device, rows))
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            out = fn(self.replicas[index], *move_to(args, device), **move_to(kwargs, device))
        return move_to(out, self.devices[0])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self.devices), thread_name_prefix="data-parallel")
        return self._pool

    def close(self) -> None:
        """Stop the worker threads and drop the replica copies."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.replicas = [r for r in self.replicas if r is self.module]


def _thread_modes() -> tuple[bool, bool]:
    """The caller's grad / inference modes (thread-local in torch, so threads must re-enter them)."""
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def _with_modes(modes: tuple[bool, bool], fn: Callable, *args):
    grad, inference = modes
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        return fn(*args)
