"""Device discovery, `gpu_ids` parsing and free / total memory, for GPUs and the CPU.

The nodes take a `gpu_ids` string; this module turns it into `torch.device`s and refuses
anything that does not exist, listing what does. "cpu,cpu" gives simulated devices
(`cpu:0`, `cpu:1`) so every multi-device path runs and is tested on a machine without a GPU
(plain torch puts tensors sent to `cpu:1` on `cpu`; the tests' simulated devices keep them apart).
A device named more than once ("0,0") is shared: its ranks run on it side by side, each planned
with an equal share of its free memory (`free_bytes_each`), and a worker group over a shared GPU
talks over gloo (parallel/backend.py: NCCL takes one rank per GPU).
Utilisation and temperature come from NVML (pynvml) or GPUtil when either is installed.
"""
from dataclasses import dataclass

import psutil
import torch

from ..utils.errors import InputError

INPUT_NAME = "gpu_ids"


@dataclass
class DeviceInfo:
    """One device as the status report shows it; utilisation (%) / temperature (C) may be unknown."""

    device: torch.device
    name: str
    total_bytes: int
    free_bytes: int
    utilization: float | None = None
    temperature: float | None = None


def cuda_count() -> int:
    """Number of visible CUDA GPUs (0 on a machine without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_text() -> str:
    """What `gpu_ids` may name on this machine, for error messages."""
    count = cuda_count()
    gpus = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
    gpu_part = f"GPU ids {gpus}" if count else "no CUDA GPU on this machine"
    return (f"{gpu_part}; 'all'; 'cpu', or 'cpu,cpu' (simulated devices on the CPU); comma-separated; "
            "a device named twice ('0,0') is shared by two ranks")


def _parse_token(token: str, input_name: str) -> torch.device:
    """One comma-separated item: '0', 'cuda:1', 'cuda', 'cpu', 'cpu:1'."""
    text = token.strip().lower()
    if text in ("cpu", "cuda"):
        return torch.device(text)
    kind, _, index = text.rpartition(":")
    if kind not in ("", "cuda", "cpu") or not index.isdigit():
        raise InputError(input_name, f"'{token.strip()}' is not a device id", available_text())
    if kind == "cpu":
        return torch.device("cpu", int(index))
    return torch.device("cuda", int(index))


def _number_simulated_cpus(devices: list[torch.device]) -> list[torch.device]:
    """'cpu,cpu' -> cpu:0, cpu:1 (distinct simulated devices); a single 'cpu' stays 'cpu'."""
    if len(devices) == 1:
        return devices
    if all(d.index is None for d in devices):
        return [torch.device("cpu", i) for i in range(len(devices))]
    return devices


def _check_devices(devices: list[torch.device], input_name: str) -> None:
    """Refuse mixed cpu/cuda lists and GPU ids this machine lacks."""
    kinds = {d.type for d in devices}
    if len(kinds) > 1:
        raise InputError(input_name, "mixes CPU and GPU devices", available_text())
    count = cuda_count()
    missing = [str(d.index) for d in devices if d.type == "cuda" and d.index >= count]
    if missing:
        raise InputError(input_name, f"GPU {', '.join(missing)} does not exist "
                         f"({count} GPU{'s' if count != 1 else ''} visible)", available_text())


def parse_gpu_ids(gpu_ids: str, input_name: str = INPUT_NAME) -> list[torch.device]:
    """Turn a `gpu_ids` string into devices: "0,1", "cuda:0,cuda:1", "all", "cpu", "cpu,cpu".

    "all" is every visible GPU, or the CPU when there is none. Raises InputError naming
    `input_name` and listing what exists for junk or unknown ids. A repeated id is a shared device.
    """
    if not isinstance(gpu_ids, str) or not gpu_ids.strip():
        raise InputError(input_name, "is empty", available_text())
    text = gpu_ids.strip().lower()
    if text == "all":
        count = cuda_count()
        return [torch.device("cuda", i) for i in range(count)] if count else [torch.device("cpu")]
    tokens = text.split(",")
    if any(not t.strip() for t in tokens):
        raise InputError(input_name, f"'{gpu_ids}' has an empty item", available_text())
    devices = [_parse_token(t, input_name) for t in tokens]
    devices = [torch.device("cuda", 0) if d.type == "cuda" and d.index is None else d for d in devices]
    if devices[0].type == "cpu":
        devices = _number_simulated_cpus(devices)
    _check_devices(devices, input_name)
    return devices


def free_bytes(device: torch.device | str) -> int:
    """Free memory of a device: CUDA mem_get_info, or the host's available RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device.index or 0)[0])
    return int(psutil.virtual_memory().available)


def shared_devices(devices: list[torch.device]) -> list[torch.device]:
    """The devices `devices` names more than once, in order of first appearance."""
    return [d for i, d in enumerate(devices) if d in devices[i + 1:] and d not in devices[:i]]


def free_bytes_each(devices: list[torch.device]) -> list[int]:
    """Free memory per entry of `devices`: a device named k times gives each entry 1/k of its free memory."""
    return [free_bytes(d) // devices.count(d) for d in devices]


def total_bytes(device: torch.device | str) -> int:
    """Total memory of a device: the GPU's memory, or the host's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    return int(psutil.virtual_memory().total)


def _nvml_readings(index: int) -> tuple[float | None, float | None]:
    """(utilisation %, temperature C) from pynvml, then GPUtil; (None, None) when neither works."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        temp = float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        return util, temp
    except Exception:  # absent module, no driver, or a GPU NVML cannot read: readings are optional
        pass
    try:
        import GPUtil

        gpu = GPUtil.getGPUs()[index]
        return float(gpu.load) * 100.0, float(gpu.temperature)
    except Exception:  # same: optional extras only
        return None, None


def device_info(device: torch.device | str) -> DeviceInfo:
    """The DeviceInfo of one device (the CPU entry describes host RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index or 0
        util, temp = _nvml_readings(index)
        return DeviceInfo(device, torch.cuda.get_device_name(index), total_bytes(device),
                          free_bytes(device), util, temp)
    return DeviceInfo(device, "CPU (host RAM)", total_bytes(device), free_bytes(device),
                      psutil.cpu_percent(interval=None), None)


def list_devices(include_cpu: bool = True) -> list[DeviceInfo]:
    """Every visible CUDA GPU, then (by default) the CPU with host RAM as its memory."""
    infos = [device_info(torch.device("cuda", i)) for i in range(cuda_count())]
    if include_cpu:
        infos.append(device_info(torch.device("cpu")))
    return infos


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether `a` and `b` are one device: `cpu` is `cpu:0` (as `cuda` is `cuda:0`), `cpu:1` is another.

    Plain torch puts both simulated CPUs on the host, but a move between them is what a real
    GPU pair needs, and devtools/simulated_devices.py makes cpu:1 hold tensors of its own.
    """
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def home_device(device: torch.device | str) -> torch.device:
    """The device tensors sent to `device` report: cuda:N; plain `cpu` for cpu:N in plain torch, but cpu:N
    itself on the tests' simulated devices (where cpu:1 holds tensors of its own)."""
    return torch.empty(0, device=device).device


def storage_device(device: torch.device) -> torch.device:
    """Where tensors sent to `device` actually live: simulated cpu:N -> cpu."""
    return torch.device("cpu") if device.type == "cpu" else device
