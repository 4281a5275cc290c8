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

from ..utils.errors import InputError
from .comfy_runtime import ensure_comfy

SUPPORTED = ("Wan 2.1 T2V / I2V / FLF2V and Wan 2.2 TI2V 5B / T2V / I2V 14B models loaded by ComfyUI "
             "(UNETLoader, MultiGPULoader, GGUF or LoRA-patched Wan)")
SEQUENCE_PARALLEL_SUPPORTED = "plain Wan 2.1 / 2.2 T2V, I2V and TI2V models (not VACE, Camera, HuMo, S2V, Animate)"


def diffusion_model_of(model_patcher) -> nn.Module | None:
    """The patcher's diffusion model (BaseModel.diffusion_model), or None for another object."""
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def is_wan(diffusion_model) -> bool:
    """Whether a diffusion model is ComfyUI's WanModel or one of its subclasses."""
    ensure_comfy()
    from comfy.ldm.wan.model import WanModel

    return isinstance(diffusion_model, WanModel)


def is_plain_wan(diffusion_model) -> bool:
    """Exactly WanModel: its forward is the one the sequence-parallel worker hooks into."""
    ensure_comfy()
    from comfy.ldm.wan.model import WanModel

    return type(diffusion_model) is WanModel


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
    return diffusion_model.blocks


def block_prefix(index: int) -> str:
    """State-dict / module-name prefix of block `index` under the BaseModel."""
    return f"diffusion_model.blocks.{index}."


def block_index_of(name: str) -> int | None:
    """The block index a BaseModel module or weight name belongs to, or None (embeddings, head)."""
    prefix = "diffusion_model.blocks."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class WanSpec:
    """Plain data a worker needs to rebuild the model: ComfyUI's detected unet config and dtypes."""

    unet_config: dict
    manual_cast_dtype: torch.dtype | None

    def to_message(self) -> dict:
        """A plain dict (messages to workers carry no pack classes)."""
        return asdict(self)


def wan_spec(model_patcher) -> WanSpec:
    """The spec of a patcher's Wan model, as ComfyUI's model detection configured it."""
    base_model = model_patcher.model
    return WanSpec(dict(base_model.model_config.unet_config), base_model.manual_cast_dtype)


def build_wan_model(spec: dict, state_dict: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """Rebuild a WanModel from a spec and its diffusion-model weights (zero-copy on the CPU).

    The model is built on the meta device and the weights are assigned, not copied, so a
    worker on the CPU computes straight from the shared-memory tensors.
    """
    ensure_comfy()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    config = dict(spec["unet_config"])
    operations = comfy.ops.pick_operations(config.get("dtype"), spec["manual_cast_dtype"])
    with torch.device("meta"):
        model = WanModel(**config, operations=operations)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Wan weights do not match the spec: missing {missing[:5]}, unexpected {unexpected[:5]}")
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise ValueError(f"Wan model has tensors without weights: {left_on_meta[:5]}")
    return model.eval().to(device).requires_grad_(False)


def diffusion_state_dict(model_patcher) -> dict[str, torch.Tensor]:
    """The diffusion model's current (patched) weights, keys relative to the diffusion model."""
    return {k: v.detach() for k, v in diffusion_model_of(model_patcher).state_dict().items()}
