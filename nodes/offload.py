"""Offload Loader / Offload Apply: run a model whose blocks do not all fit on the GPU.

The swapped blocks live in host memory and are copied to the GPU just ahead of use (prefetch)
while the blocks before them compute; see offload/swap.py and models/offload/patcher.py.
"""
import torch

import folder_paths

from ..models.comfy.loaders import load_diffusion_file
from ..models.comfy.management import free_memory, inference_reserve
from ..models.offload.patcher import OffloadSettings, apply_offload, block_sizes
from ..offload.ledger import choose_blocks_to_swap, planned_peak
from ..utils.errors import InputError

PRECISIONS = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
              "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
GIB = 1024 ** 3

OFFLOAD_INPUTS = {
    "blocks_to_swap": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip":
                       "How many transformer blocks live in host memory and are swapped in while sampling (the "
                       "last ones). 0 = choose the fewest that fit vram_budget_gb."}),
    "vram_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                       "GPU memory the model's weights may use when blocks_to_swap is 0. 0 = the GPU's free "
                       "memory minus ComfyUI's inference reserve."}),
    "prefetch_blocks": ("INT", {"default": 1, "min": 0, "max": 16, "tooltip":
                        "How many swapped blocks are copied ahead of the one computing (on a side CUDA stream). "
                        "0 = copy each block just before it runs."}),
    "pin_memory": ("BOOLEAN", {"default": False, "tooltip":
                   "Keep swapped blocks in page-locked host memory for faster, truly asynchronous copies "
                   "(uses non-swappable RAM; ignored without a CUDA GPU)."}),
    "offload_device": (["cpu"], {"tooltip": "Where swapped blocks live between uses: host memory."}),
    "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                               "Recompute each block's activations in backward instead of storing them "
                               "(training only; sampling is unaffected). Training needs blocks_to_swap 0."}),
}


def resolve_settings(model, blocks_to_swap, vram_budget_gb, prefetch_blocks, pin_memory, offload_device,
                     gradient_checkpointing) -> OffloadSettings:
    """Validate the node inputs and turn blocks_to_swap 0 into a count that fits the budget."""
    if offload_device != "cpu":
        raise InputError("offload_device", f"{offload_device!r} is not supported", "cpu")
    sizes, other = block_sizes(model.model)
    if blocks_to_swap > len(sizes):
        raise InputError("blocks_to_swap", f"{blocks_to_swap} but the model has {len(sizes)} blocks",
                         f"0..{len(sizes)}")
    if blocks_to_swap == 0:
        blocks_to_swap = _from_budget(model, sizes, other, vram_budget_gb, prefetch_blocks)
    return OffloadSettings(blocks_to_swap, prefetch_blocks, pin_memory, offload_device, gradient_checkpointing)


def _from_budget(model, sizes, other, vram_budget_gb, prefetch_blocks) -> int:
    if vram_budget_gb > 0:
        budget = int(vram_budget_gb * GIB)
    else:
        budget = free_memory(model.load_device, model) - inference_reserve()
    count = choose_blocks_to_swap(sizes, prefetch_blocks, budget, other)
    if count is None:
        need = planned_peak(sizes, len(sizes), prefetch_blocks, other) / GIB
        raise InputError("vram_budget_gb", f"{max(budget, 0) / GIB:.2f} GB cannot hold the model even with every "
                         f"block swapped ({need:.2f} GB needed with prefetch_blocks {prefetch_blocks})",
                         f"at least {need:.2f}, or a lower prefetch_blocks")
    return count


class OffloadLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (folder_paths.get_filename_list("diffusion_models"), {"tooltip":
                          "A Wan 2.1 / 2.2 model file in ComfyUI's diffusion_models folder."}),
            "base_precision": (list(PRECISIONS), {"default": "default", "tooltip":
                               "Dtype the weights are kept (and swapped) in. default = ComfyUI's choice for the "
                               "file and device, as the Load Diffusion Model node does."}),
            **OFFLOAD_INPUTS,
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "parallel/offload"
    DESCRIPTION = ("Load a diffusion model with block offloading: only the blocks being computed (and the next "
                   "ones, prefetched) are on the GPU. Use with ComfyUI's own KSampler.")

    def load(self, unet_name, base_precision, **options):
        if base_precision not in PRECISIONS:
            raise InputError("base_precision", f"{base_precision!r} is unknown", ", ".join(PRECISIONS))
        model = load_diffusion_file(unet_name, PRECISIONS[base_precision], non_dynamic_for="offload")
        return (apply_offload(model, resolve_settings(model, **options)),)


class OffloadApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Any Wan MODEL (LoRA-patched, GGUF, ...): its patched weights are "
                                "what gets swapped."}),
            **OFFLOAD_INPUTS,
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "parallel/offload"
    DESCRIPTION = "Block offloading with prefetch for an already loaded MODEL; returns a patched clone."

    def apply(self, model, **options):
        return (apply_offload(model, resolve_settings(model, **options)),)


NODE_CLASS_MAPPINGS = {"OffloadLoader": OffloadLoader, "OffloadApply": OffloadApply}
NODE_DISPLAY_NAME_MAPPINGS = {"OffloadLoader": "Offload Loader", "OffloadApply": "Offload Apply"}
