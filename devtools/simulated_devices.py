"""Simulated devices on the CPU that really are different: `cpu:1`, `cpu:2`, ... hold their own tensors.

Plain torch puts a tensor sent to `cpu:1` on `cpu`, so a placement over "cpu,cpu" computes
exactly as one device would, and a missing move goes unnoticed. While `simulated_devices()` is
on, a tensor moved or created on `cpu:N` (N >= 1) is a `SimTensor`: a wrapper subclass whose
`.device` says `cpu:N` and which holds its own copy of the data (every move is a real copy),
and an op whose tensors sit on different devices raises, as CUDA does, "Expected all tensors to
be on the same device". `cpu` and `cpu:0` are the same device (as `cuda` and `cuda:0` are), so
the pack's "cpu,cpu" (cpu:0, cpu:1) keeps its main device on plain `cpu`; 0-dim plain CPU
tensors mix with any device, as CPU scalars do on CUDA. The gpu_ids strings are the pack's own.

Why a wrapper subclass and a dispatch mode, not a PrivateUse1 backend: a PrivateUse1 device
needs a C++ allocator and a kernel for every op, and ComfyUI's model management sends any
device type other than cpu / mps down its CUDA paths (`torch.cuda.memory_stats`). Devices of
type `cpu` with an index keep ComfyUI's CPU behaviour while every op still checks placement.
- `SimTensor.__torch_dispatch__` runs each op on the inner CPU tensors and wraps the results;
  it works in any thread, so tensors already on a simulated device are always checked.
- `SimulatedDeviceMode` (a TorchDispatchMode) catches what starts on a plain tensor: a move
  (`_to_copy`) or a factory (`empty`, `zeros_like`, ...) naming `cpu:N`. Modes are per thread,
  so while on, every thread started through `threading` enters one too (a one-shot profile hook,
  `threading.setprofile`): ThreadPoolExecutor workers and ComfyUI's prompt worker included.
- `param.data = t` (nn.Module.to, the offloader's swap) copies only the C++ tensor, not the
  Python object holding the inner tensor; `Tensor.data` is wrapped so the parameter becomes a
  SimTensor (still a Parameter to `isinstance`) or a plain tensor again. The wrapper stays once
  installed (it passes plain tensors through): SimTensors can outlive the switch (a model left
  loaded by ComfyUI) and must still move back correctly later.
"""
import contextlib
import sys
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map_only

aten = torch.ops.aten
_BASE_DATA = torch._C.TensorBase.data
_STATE = {"depth": 0}


def sim_index(device) -> int | None:
    """N for a simulated cpu:N (0 for plain cpu), None for any other device."""
    device = torch.device(device)
    return (device.index or 0) if device.type == "cpu" else None


class SimTensor(torch.Tensor):
    """A tensor on simulated device cpu:`index` (>= 1); `elem` is its own CPU copy of the data."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, index: int):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=torch.device("cpu", index), requires_grad=elem.requires_grad)
        tensor.elem = elem
        return tensor

    def __repr__(self, *, tensor_contents=None):
        return f"SimTensor({self.elem!r}, device='{self.device}')"

    def data_ptr(self) -> int:
        return self.elem.data_ptr()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})


def _index_of(tensor: torch.Tensor) -> int:
    return tensor.device.index if isinstance(tensor, SimTensor) else 0


def _unwrap(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.elem if isinstance(tensor, SimTensor) else tensor


def _wrap(index: int):
    return lambda t: SimTensor(t, index) if index and not isinstance(t, SimTensor) else t


def _target_index(args: tuple, kwargs: dict) -> int | None:
    """The simulated index of the device an op names (keyword `device`, or a positional device), if any."""
    devices = [d for d in tree_flatten((args, kwargs))[0] if isinstance(d, torch.device)]
    return sim_index(devices[0]) if devices else None


def _host_devices(tree):
    """`tree` with every CPU device in it made plain `cpu` (what the inner CPU tensors are on)."""
    return tree_map_only(torch.device, lambda d: torch.device("cpu") if d.type == "cpu" else d, tree)


def _common_index(func, args, kwargs) -> int:
    """The one device of the op's tensors; raises as CUDA does when they differ."""
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    placed = {_index_of(t) for t in tensors if isinstance(t, SimTensor) or t.dim() > 0}
    if len(placed) > 1:
        first, second = sorted(placed)[:2]
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"cpu:{first} and cpu:{second}! (simulated devices, op {func})")
    if placed:
        return placed.pop()
    return max((_index_of(t) for t in tensors), default=0)


def dispatch(func, args: tuple, kwargs: dict):
    """Run one aten op with simulated placement: check devices, compute on CPU copies, wrap results.

    A composite op (`aten.to` gets here under inference_mode, as ComfyUI runs prompts) runs its
    decomposition instead, so the aliasing `to` becomes the `_to_copy` handled in `_run`.
    """
    decomposed = func.decompose(*args, **kwargs)
    return _run(func, args, kwargs) if decomposed is NotImplemented else decomposed


def _run(func, args: tuple, kwargs: dict):
    if func is aten.copy_.default:
        _unwrap(args[0]).copy_(_unwrap(args[1]), *args[2:], **kwargs)
        return args[0]
    target = _target_index(args, kwargs)
    if target is not None:
        args, kwargs = _host_devices((args, kwargs))
    if func is aten._to_copy.default or target is not None:  # a move: wherever it goes (default: stays)
        index = target if target is not None else _index_of(args[0])
    else:
        index = _common_index(func, args, kwargs)
    out = func(*tree_map_only(torch.Tensor, _unwrap, args), **tree_map_only(torch.Tensor, _unwrap, kwargs))
    wrapped = tree_map_only(torch.Tensor, _wrap(index), out)
    if not index:
        return wrapped
    return return_and_correct_aliasing(func, args, kwargs, wrapped)


def _simulated(args, kwargs) -> bool:
    if any(isinstance(t, SimTensor) for t in tree_flatten((args, kwargs))[0]):
        return True
    return bool(_target_index(args, kwargs))


class SimulatedDeviceMode(TorchDispatchMode):
    """Routes ops that touch a simulated device (a SimTensor, or device=cpu:N) through `dispatch`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _simulated(args, kwargs):
            return func(*args, **kwargs)
        with self:  # a decomposition's own ops (the `_to_copy` of a plain tensor's `to`) come back here
            decomposed = func.decompose(*args, **kwargs)
        return _run(func, args, kwargs) if decomposed is NotImplemented else decomposed


def _set_data(tensor: torch.Tensor, new: torch.Tensor) -> None:
    """`tensor.data = new` keeping the inner copy: the tensor becomes a SimTensor, or plain again.

    A plain `set_data` copies the C++ metadata but neither the Python dispatch key nor the Python
    object, so the C++ tensors are swapped instead (`torch.utils.swap_tensors`, object identity
    kept) and the object's class, attributes and requires_grad put back as `.data =` leaves them.
    Under inference_mode torch's swap cannot check a tensor that requires grad (ComfyUI's do not).
    """
    if not isinstance(new, SimTensor) and not isinstance(tensor, SimTensor):
        _BASE_DATA.__set__(tensor, new)
        return
    attributes, requires_grad = dict(tensor.__dict__), tensor.requires_grad
    plain_class = attributes.pop("_pack_plain_class", type(tensor))
    attributes.pop("elem", None)
    torch.utils.swap_tensors(tensor, new.detach())
    if isinstance(tensor, SimTensor):
        tensor.__dict__.update(attributes, _pack_plain_class=plain_class,
                               _is_param=issubclass(plain_class, torch.nn.Parameter))
    else:
        tensor.__class__ = plain_class
        tensor.__dict__.clear()
        tensor.__dict__.update({k: v for k, v in attributes.items() if k != "_is_param"})
    tensor.requires_grad_(requires_grad)


def _enter_mode_in_new_thread(_frame, _event, _arg):
    """One-shot profile hook: the first event of a new thread enters a mode there, then stops profiling."""
    sys.setprofile(None)
    SimulatedDeviceMode().__enter__()


def _switch(on: bool) -> None:
    if on:
        torch.Tensor.data = property(_BASE_DATA.__get__, _set_data)
    threading.setprofile(_enter_mode_in_new_thread if on else None)


@contextlib.contextmanager
def simulated_devices():
    """Turn simulated devices on in this thread and every thread started meanwhile (nests)."""
    _STATE["depth"] += 1
    if _STATE["depth"] == 1:
        _switch(True)
    try:
        with SimulatedDeviceMode():
            yield
    finally:
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0:
            _switch(False)


def enable_process_wide() -> None:
    """Simulated devices for the rest of this process (a test ComfyUI server): this thread and new ones."""
    _STATE["depth"] += 1
    if _STATE["depth"] == 1:
        _switch(True)
    SimulatedDeviceMode().__enter__()
