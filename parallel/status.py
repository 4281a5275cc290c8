"""The GPU status report: devices, a gpu_ids check, and a parallelism recommendation for a model file.

Shared by the GPUStatus node, the `GET /parallel/gpus` route and the utility API. A model
file's size and per-block bytes come from its safetensors header alone (no weights are
read), so a 28 GB checkpoint is sized instantly; other formats count as their file size.
"""
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..utils.errors import InputError
from .devices import DeviceInfo, free_bytes_each, list_devices, parse_gpu_ids
from .plan import GIB, PlanError, gib, plan_blocks, recommend

DEFAULT_RESERVE_GB = 2.0
BLOCK_KEY = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
PRECISIONS = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}


@dataclass
class ModelFileInfo:
    """Bytes of a model file's tensors: per transformer block (in order) and outside the blocks."""

    path: str
    total_bytes: int
    block_sizes: list[int] = field(default_factory=list)
    other_bytes: int = 0
    precision: str | None = None


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise InputError("model", f"'{path.name}' is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            raise InputError("model", f"'{path.name}' has no valid safetensors header")
        try:
            return json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError("model", f"'{path.name}' has a corrupt safetensors header ({err})") from None


def read_model_file(path: str | Path) -> ModelFileInfo:
    """Size a model file from its header; blocks are the tensors named `...blocks.<n>....`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model", f"file '{path}' not found", "a file in diffusion_models or checkpoints")
    if path.suffix.lower() != ".safetensors":
        return ModelFileInfo(str(path), path.stat().st_size, [], path.stat().st_size)
    blocks: dict[int, int] = {}
    other, dtypes = 0, {}
    for name, entry in _safetensors_header(path).items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtypes[entry["dtype"]] = dtypes.get(entry["dtype"], 0) + end - start
        match = BLOCK_KEY.search(name)
        if match:
            blocks[int(match.group(1))] = blocks.get(int(match.group(1)), 0) + end - start
        else:
            other += end - start
    sizes = [blocks.get(i, 0) for i in range(max(blocks) + 1)] if blocks else []
    main_dtype = max(dtypes, key=dtypes.get) if dtypes else None
    return ModelFileInfo(str(path), sum(sizes) + other, sizes, other, PRECISIONS.get(main_dtype))


def _device_dict(info: DeviceInfo) -> dict:
    data = asdict(info)
    data["device"] = str(info.device)
    return data


def _chosen_indices(free: list[int], reserve: int, count: int) -> list[int]:
    """The `count` devices with the most usable memory, in their gpu_ids order."""
    ranked = sorted(range(len(free)), key=lambda i: -(free[i] - reserve))
    return sorted(ranked[:count])


def recommend_for_model(model: ModelFileInfo, devices: list[torch.device], reserve_bytes: int) -> dict:
    """Recommendation for a model on `devices`: type, chosen devices, blocks to swap, block plan."""
    free = free_bytes_each(devices)
    rec = recommend(model.total_bytes, free, reserve_bytes)
    chosen = _chosen_indices(free, reserve_bytes, rec.device_count)
    result = {"parallelism_type": rec.parallelism_type, "devices": [str(devices[i]) for i in chosen],
              "reason": rec.reason, "blocks_to_swap_fraction": rec.blocks_to_swap_fraction,
              "blocks_to_swap": rec.blocks_to_swap(len(model.block_sizes)) if model.block_sizes else None,
              "plan": None}
    if rec.parallelism_type == "block_distribution" and model.block_sizes and not rec.blocks_to_swap_fraction:
        caps = [max(free[i] - reserve_bytes, 0) for i in chosen]
        try:
            plan = plan_blocks(model.block_sizes, caps, model.other_bytes)
            result["plan"] = plan.describe(result["devices"])
        except PlanError as err:
            result["plan"] = str(err)
    return result


def gpu_status(gpu_ids: str = "all", model_path: str | Path | None = None,
               reserve_gb: float = DEFAULT_RESERVE_GB) -> dict:
    """Everything the report shows, as JSON-ready data; an invalid gpu_ids gives valid=False."""
    status = {"devices": [_device_dict(i) for i in list_devices()], "gpu_ids": gpu_ids,
              "valid": True, "message": "", "selected": [], "model": None, "recommendation": None}
    try:
        devices = parse_gpu_ids(gpu_ids)
    except InputError as err:
        status.update(valid=False, message=str(err))
        return status
    status["selected"] = [str(d) for d in devices]
    status["message"] = f"gpu_ids '{gpu_ids}' -> {', '.join(status['selected'])}"
    if len(devices) > 1 and devices[0].type == "cpu":
        status["message"] += " (simulated devices sharing host RAM)"
    if model_path:
        model = read_model_file(model_path)
        status["model"] = asdict(model)
        status["recommendation"] = recommend_for_model(model, devices, int(reserve_gb * GIB))
    return status


def _device_line(device: dict) -> str:
    extras = []
    if device["utilization"] is not None:
        extras.append(f"{device['utilization']:.0f}% busy")
    if device["temperature"] is not None:
        extras.append(f"{device['temperature']:.0f} C")
    tail = f", {', '.join(extras)}" if extras else ""
    return f"  {device['device']}: {device['name']}, {gib(device['free_bytes'])} free of {gib(device['total_bytes'])}{tail}"


def format_report(status: dict) -> str:
    """The human-readable report of `gpu_status(...)`."""
    gpu_count = sum(1 for d in status["devices"] if d["device"].startswith("cuda"))
    lines = [f"Devices ({gpu_count} GPU{'s' if gpu_count != 1 else ''}):"]
    lines += [_device_line(d) for d in status["devices"]]
    lines.append(("OK: " if status["valid"] else "INVALID: ") + status["message"])
    model, rec = status["model"], status["recommendation"]
    if model and rec:
        blocks = f", {len(model['block_sizes'])} blocks" if model["block_sizes"] else ""
        lines.append(f"Model {Path(model['path']).name}: {gib(model['total_bytes'])}{blocks}")
        lines.append(f"Recommended: {rec['parallelism_type']} on {', '.join(rec['devices'])} - {rec['reason']}")
        if rec["blocks_to_swap"]:
            lines.append(f"Blocks to swap to the CPU: {rec['blocks_to_swap']} of {len(model['block_sizes'])}")
        if rec["plan"]:
            lines.append("Block plan:\n" + "\n".join(f"  {line}" for line in rec["plan"].splitlines()))
    return "\n".join(lines)
