"""Patched weights computed the way ComfyUI's own loading computes them.

`ModelPatcher.patch_weight_to_device` applies weight patches (LoRA) when KSampler loads a
model: fp32 on the load device, `comfy.lora.calculate_weight`, stochastic rounding back to
the weight's dtype with a per-key seed. Workers that rebuild a model need those very weights.
"""
import torch

from ...utils.errors import InputError
from .management import cast_to_device, string_to_seed
from .runtime import ensure_comfy

ensure_comfy()
import comfy.float  # noqa: E402
import comfy.lora  # noqa: E402
import comfy.model_patcher  # noqa: E402


def patched_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights KSampler computes with: the original weights with this patcher's weight patches.

    Original weights come from `get_key_patches`, which reads ComfyUI's backup when another clone
    has patched the shared model in place (it stays loaded after a KSampler run).
    """
    state = {}
    for key, (weight, convert_func), *patches in ((k, *v) for k, v in model.get_key_patches().items()):
        if not patches:
            state[key] = weight.detach().to("cpu")
            continue
        if comfy.model_patcher.get_key_weight(model.model, key)[1] is not None:
            raise InputError("model", f"has weight patches on a quantized weight ({key})",
                             "weight patches on plain (fp32 / fp16 / bf16) weights")
        temp = cast_to_device(weight, model.load_device, torch.float32, copy=True)
        out = comfy.lora.calculate_weight(patches, convert_func(temp, inplace=True), key)
        out = comfy.float.stochastic_rounding(out, weight.dtype, seed=string_to_seed(key))
        state[key] = out.detach().to("cpu")
    return state
