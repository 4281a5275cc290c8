"""Offload Loader / Offload Apply: run a model whose blocks do not all fit on the GPU.

The swapped blocks live in host memory and are copied to the GPU just ahead of use (prefetch)
while the blocks before them compute; see offload/swap.py and models/offload/patcher.py.
"""
import folder_paths

from ..models.comfy.loaders import WEIGHT_DTYPES, load_diffusion_file, weight_dtype
from ..models.offload.patcher import GIB, OffloadSettings, apply_offload, block_sizes, fewest_swapped
from ..utils.errors import InputError


OFFLOAD_INPUTS = {
    "blocks_to_swap": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip":
                       "How many transformer blocks live in host memory and are swapped in while sampling (the "
                       "last ones). 0 = choose the fewest that fit vram_budget_gb."}),
    "vram_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                       "GPU memory the model's weights may use when blocks_to_swap is 0. 0 = the GPU's free "
                       "memory when the model loads (as ComfyUI accounts it, after it made room) minus its "
                       "inference reserve."}),
    "prefetch_blocks": ("INT", {"default": 1, "min": 0, "max": 16, "tooltip":
                        "How many swapped blocks are copied ahead of the one computing (on a side CUDA stream). "
                        "0 = copy each block just before it runs."}),
    "pin_memory": ("BOOLEAN", {"default": True, "tooltip":
                   "Keep swapped blocks in page-locked host memory (pinned once at load, no second copy) for "
                   "fast, truly asynchronous copies; uses non-swappable RAM, the console says how much. Falls "
                   "back to pageable memory with a warning when pinning fails; ignored without a CUDA GPU."}),
    "offload_device": (["cpu"], {"tooltip": "Where swapped blocks live between uses: host memory."}),
    "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                               "Recompute each block's activations in backward instead of storing them "
                               "(training only; sampling is unaffected). Training needs blocks_to_swap 0."}),
}


def resolve_settings(model, blocks_to_swap, vram_budget_gb, prefetch_blocks, pin_memory, offload_device,
                     gradient_checkpointing) -> OffloadSettings:
    """Validate the node inputs; blocks_to_swap 0 becomes the count that fits vram_budget_gb, or with a budget
    of 0 is left to the patcher, which chooses it from the free memory when ComfyUI loads the model."""
    if offload_device != "cpu":
        raise InputError("offload_device", f"{offload_device!r} is not supported", "cpu")
    sizes, _ = block_sizes(model.model)
    if blocks_to_swap > len(sizes):
        raise InputError("blocks_to_swap", f"{blocks_to_swap} but the model has {len(sizes)} blocks",
                         f"0..{len(sizes)}")
    if blocks_to_swap == 0 and vram_budget_gb > 0:
        blocks_to_swap = fewest_swapped(model.model, int(vram_budget_gb * GIB), prefetch_blocks)
    elif blocks_to_swap == 0:
        blocks_to_swap = None
    return OffloadSettings(blocks_to_swap, prefetch_blocks, pin_memory, offload_device, gradient_checkpointing)


class OffloadLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (folder_paths.get_filename_list("diffusion_models"), {"tooltip":
                          "A Wan 2.1 / 2.2 model file in ComfyUI's diffusion_models folder."}),
            "base_precision": (list(WEIGHT_DTYPES), {"default": "default", "tooltip":
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
        model = load_diffusion_file(unet_name, weight_dtype(base_precision), non_dynamic_for="offload")
        return (apply_offload(model, resolve_settings(model, **options)),)


class OffloadApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Wan MODEL from ComfyUI's loaders; a LoRA loader before or after "
                                "this node applies (the patched weights are what gets swapped). MODELs of other "
                                "packs' loaders (GGUF) are not tested."}),
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
