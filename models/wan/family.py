"""Wan-family knowledge: which ComfyUI models are Wan, where their blocks are, how to rebuild one.

ComfyUI's native Wan 2.1 / 2.2 models are all `comfy.ldm.wan.model.WanModel` (or a subclass
such as VACE or Camera) inside a `comfy.model_base.WAN21` / `WAN22`. Their transformer blocks
are `diffusion_model.blocks`; embeddings and head are small and stay on the main device.

A worker process rebuilds the same WanModel from plain data (`WanSpec`: the detected unet
config and the compute dtype) plus the main process's weights in shared memory, so it never
reads the model file again and loads with the same ComfyUI class the server uses.
"""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...utils.errors import InputError
from ..comfy import wan as comfy_wan
from ..comfy.rebuild import model_spec
from ..comfy.wan import is_plain_wan, is_wan

SUPPORTED = ("Wan 2.1 T2V / I2V / FLF2V and Wan 2.2 TI2V 5B / T2V / I2V 14B models loaded by ComfyUI "
             "(UNETLoader, MultiGPULoader, LoRA-patched Wan)")
SEQUENCE_PARALLEL_SUPPORTED = "plain Wan 2.1 / 2.2 T2V, I2V and TI2V models (not VACE, Camera, HuMo, S2V, Animate)"


def diffusion_model_of(model_patcher) -> nn.Module | None:
    """The patcher's diffusion model (BaseModel.diffusion_model), or None for another object."""
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def require_wan(model_patcher, mode: str, input_name: str = "model", plain: bool = False) -> nn.Module:
    """The Wan diffusion model of a MODEL, or an InputError naming `mode` and what it supports."""
    diffusion_model = diffusion_model_of(model_patcher)
    ok = is_plain_wan(diffusion_model) if plain else is_wan(diffusion_model)
    if not ok:
        found = type(diffusion_model).__name__ if diffusion_model is not None else type(model_patcher).__name__
        raise InputError(input_name, f"parallelism_type '{mode}' needs a Wan model, got {found}",
                         SEQUENCE_PARALLEL_SUPPORTED if plain else SUPPORTED)
    return diffusion_model


def wan_blocks(diffusion_model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Wan model, in execution order."""
    return getattr(diffusion_model, comfy_wan.BLOCKS)


def works_between_blocks(diffusion_model: nn.Module) -> bool:
    """Whether the model's forward uses the hidden state between its blocks, on the main device.

    Plain WanModel only chains the blocks. Every subclass in ComfyUI has a forward of its own:
    VACE adds its skip after some blocks, S2V its audio, Camera / HuMo / Animate their inputs;
    block placement brings such a model's hidden state back after every block.
    """
    return not is_plain_wan(diffusion_model)


def block_index_of(name: str) -> int | None:
    """The block index a BaseModel module or weight name belongs to, or None (embeddings, head)."""
    prefix = "diffusion_model.blocks."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class WanSpec:
    """Plain data a worker needs to rebuild the model: ComfyUI's detected unet config, dtypes and quantization."""

    unet_config: dict
    manual_cast_dtype: torch.dtype | None
    quantization: dict

    def to_message(self) -> dict:
        """A plain dict (messages to workers carry no pack classes)."""
        return asdict(self)


def wan_spec(model_patcher) -> WanSpec:
    """The spec of a patcher's Wan model, as ComfyUI's model detection configured it."""
    spec = model_spec(model_patcher)
    return WanSpec(spec["unet_config"], spec["manual_cast_dtype"], spec["quantization"])

