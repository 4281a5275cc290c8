"""The Multi-GPU nodes' options turned into one checked MultiGPUSettings, and applied to a MODEL.

Every refusal is an InputError naming the input and what is allowed: an unknown mode,
gpu_ids naming devices the machine lacks, data_parallel / distributed with one device,
distributed naming a device twice,
weight_sharding fsdp outside distributed,
block_distribution or distributed on a model that is not Wan.
`auto` takes the recommendation GPUStatus prints (parallel.plan.recommend); weight_sharding auto
is fsdp when a replica plus the reserve does not fit a device (models/multi_gpu/sharding.py).
"""
import logging
from dataclasses import dataclass

import torch

from ...parallel.devices import free_bytes_each, parse_gpu_ids, shared_devices
from ...parallel.plan import GIB, recommend
from ...parallel.sharding import SHARDINGS
from ...utils.errors import InputError
from ..comfy.patcher import is_dynamic, non_dynamic
from ..wan.family import diffusion_model_of, is_wan, require_wan
from .patcher import MultiGPUSettings, as_multi_gpu
from .remote import check_remote
from .sharding import resolve_sharding
from .wrappers import attach_runners

MODES = ("auto", "none", "data_parallel", "block_distribution", "distributed")
LOAD_DEVICES = ("main_device", "offload_device")
MULTI_DEVICE_MODES = ("data_parallel", "distributed")
log = logging.getLogger(__name__)


@dataclass
class MultiGPURequest:
    """The parallelism options as the nodes receive them."""

    parallelism_type: str = "auto"
    gpu_ids: str = "0,1"
    enable_block_distribution: bool = False
    memory_reserve_gb: float = 0.0
    load_device: str = "main_device"
    weight_sharding: str = "auto"
    remote_workers: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    model_file: str | None = None  # the file MultiGPULoader loaded (what remote workers load)


def check_choice(input_name: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(input_name, f"'{value}' is not an option", ", ".join(allowed))


def requested_mode(request: MultiGPURequest) -> str:
    """parallelism_type, with the guide's enable_block_distribution=true meaning block_distribution."""
    check_choice("parallelism_type", request.parallelism_type, MODES)
    check_choice("load_device", request.load_device, LOAD_DEVICES)
    if not request.enable_block_distribution:
        return request.parallelism_type
    if request.parallelism_type not in ("auto", "block_distribution"):
        raise InputError("enable_block_distribution",
                         f"true asks for block_distribution but parallelism_type is '{request.parallelism_type}'",
                         "false, or parallelism_type auto / block_distribution")
    return "block_distribution"


def reserve_bytes(request: MultiGPURequest) -> int:
    if request.memory_reserve_gb < 0:
        raise InputError("memory_reserve_gb", f"{request.memory_reserve_gb} is negative", "0 or more GiB")
    return int(request.memory_reserve_gb * GIB)


def choose_auto(model_patcher, devices: list[torch.device], reserve: int) -> tuple[str, list[torch.device], str]:
    """The recommended mode and devices for this model size and the devices' free memory."""
    size = model_patcher.model_size()
    rec = recommend(size, free_bytes_each(devices), reserve)
    mode = rec.parallelism_type
    if mode == "block_distribution" and not is_wan(getattr(model_patcher.model, "diffusion_model", None)):
        raise InputError("parallelism_type", f"auto: {rec.reason}, which needs block_distribution, only for Wan",
                         "a Wan model, or block offloading (Offload Apply)")
    if rec.blocks_to_swap_fraction > 0:
        log.warning("MultiGPU auto: %s (use Offload Apply for the rest)", rec.reason)
    return mode, devices[: max(rec.device_count, 1)], rec.reason


def resolve(model_patcher, request: MultiGPURequest) -> MultiGPUSettings:
    """Checked settings for `model_patcher`; raises InputError for anything it cannot run."""
    mode = requested_mode(request)
    devices = parse_gpu_ids(request.gpu_ids)
    reserve = reserve_bytes(request)
    reason = ""
    if mode == "auto":
        mode, devices, reason = choose_auto(model_patcher, devices, reserve)
    remote = check_remote(request.remote_workers, request.master_addr, request.master_port, mode, request.model_file)
    ranks = len(devices) + (remote.ranks if remote else 0)
    if mode in MULTI_DEVICE_MODES and ranks < 2:
        raise InputError("gpu_ids", f"parallelism_type '{mode}' needs at least two devices; "
                         f"'{request.gpu_ids}' names {len(devices)}",
                         "two or more ids such as '0,1' ('cpu,cpu' simulates on the CPU), or parallelism_type none")
    shared = shared_devices(devices)
    if mode == "distributed" and shared:
        raise InputError("gpu_ids", f"names {', '.join(map(str, shared))} more than once: distributed runs one rank "
                         "per device (NCCL takes one rank per GPU)", "distinct ids such as '0,1', or "
                         "data_parallel / block_distribution, which may share a device")
    if mode == "none":
        devices = devices[:1]
    if mode == "block_distribution":
        require_wan(model_patcher, mode)
    if mode == "distributed":
        require_wan(model_patcher, mode, plain=True)
    check_choice("weight_sharding", request.weight_sharding, SHARDINGS)
    sharding, sharding_reason = resolve_sharding(diffusion_model_of(model_patcher), mode, devices, reserve,
                                                 request.weight_sharding, ranks)
    reason = "; ".join(part for part in (reason, sharding_reason) if part)
    return MultiGPUSettings(mode, tuple(devices), reserve, request.load_device == "offload_device", reason, sharding,
                            remote)


def apply_multi_gpu(model_patcher, settings: MultiGPUSettings):
    """A clone of the MODEL that runs with `settings`; the input MODEL is unchanged.

    Every mode but none places or replicates the weights itself, so it takes a non-dynamic
    patcher for a Dynamic VRAM MODEL (ComfyUI 0.38+ keeps LoRA out of the parameters there).
    """
    mode = settings.parallelism_type
    if mode != "none":
        model_patcher = non_dynamic(model_patcher, mode, "it moves or copies the weights itself, with LoRA applied")
    elif is_dynamic(model_patcher):
        log.info("ComfyUI-Parallel none: this MODEL uses ComfyUI's Dynamic VRAM and keeps it (one device: "
                 "ComfyUI's own loading, weights paged in per op)")
    patched = as_multi_gpu(model_patcher, settings)
    attach_runners(patched)
    log.info("MultiGPU: %s on %s%s", settings.parallelism_type, ", ".join(map(str, settings.devices)),
             f" ({settings.reason})" if settings.reason else "")
    return patched
