"""Precomputed text embeddings as files: one CONDITIONING per file.

The format is the seed project's `cond.safetensors` / `uncond.safetensors`: a tensor named
`cond` ([tokens, dim] or [1, tokens, dim]) and optionally `pooled_output`. A bare tensor
saved with torch.save (SeedVR's pos_emb.pt / neg_emb.pt) also loads, read with
weights_only so nothing is unpickled.
"""
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import InputError

COND_KEY = "cond"
POOLED_KEY = "pooled_output"
SUFFIXES = (".safetensors", ".pt", ".pth")


def read_conditioning(path: Path, input_name: str = "file") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (cond [1, tokens, dim], pooled or None) from a safetensors or torch.save file."""
    if path.suffix not in SUFFIXES:
        raise InputError(input_name, f"'{path.name}' is not a conditioning file", ", ".join(SUFFIXES))
    tensors = read_tensors(path, input_name)
    if COND_KEY not in tensors:
        held = ", ".join(sorted(tensors)) or "nothing"
        raise InputError(input_name, f"'{path.name}' has no tensor named '{COND_KEY}'; it holds: {held}",
                         f"'{COND_KEY}' [tokens, dim] or [1, tokens, dim], optional '{POOLED_KEY}'")
    cond = as_batched_cond(tensors[COND_KEY], path.name, input_name)
    pooled = tensors.get(POOLED_KEY)
    if pooled is not None:
        pooled = pooled.reshape(1, -1) if pooled.dim() == 1 else pooled
        if pooled.dim() != 2 or pooled.shape[0] != 1:
            raise InputError(input_name, f"'{path.name}': {POOLED_KEY} has shape {list(pooled.shape)}",
                             "[dim] or [1, dim]")
    return cond, pooled


def read_tensors(path: Path, input_name: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(input_name, f"'{path.name}' is not a readable safetensors file ({error})") from error
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise InputError(input_name, f"'{path.name}' is not a readable torch tensor file ({error})") from error
    if isinstance(loaded, torch.Tensor):
        return {COND_KEY: loaded}
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    raise InputError(input_name, f"'{path.name}' holds a {type(loaded).__name__}", "a tensor or a dict of tensors")


def as_batched_cond(cond: torch.Tensor, file_name: str, input_name: str) -> torch.Tensor:
    if cond.dim() == 2:
        cond = cond.unsqueeze(0)
    if cond.dim() != 3 or cond.shape[0] != 1 or 0 in cond.shape:
        raise InputError(input_name, f"'{file_name}': {COND_KEY} has shape {list(cond.shape)}",
                         "[tokens, dim] or [1, tokens, dim]")
    if not cond.is_floating_point():
        raise InputError(input_name, f"'{file_name}': {COND_KEY} has dtype {cond.dtype}", "a floating point tensor")
    return cond


def write_conditioning(path: Path, cond: torch.Tensor, pooled: torch.Tensor | None) -> None:
    tensors = {COND_KEY: cond.detach().cpu().contiguous()}
    if pooled is not None:
        tensors[POOLED_KEY] = pooled.detach().cpu().contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
