"""WanVideo Multi-GPU Loader and Multi-GPU Apply: a native MODEL run over several devices.

Both return a ModelPatcher clone, so ComfyUI's KSampler / KSamplerAdvanced / SamplerCustom
use it unchanged and LoRAs applied before or after still apply. The modes themselves live
in models/multi_gpu/ (ComfyUI integration) and parallel/ (the engine).
"""
import folder_paths

from ..models.comfy.loaders import WEIGHT_DTYPES, load_diffusion_file, weight_dtype
from ..models.multi_gpu.settings import LOAD_DEVICES, MODES, MultiGPURequest, apply_multi_gpu, requested_mode, resolve
from ..parallel.sharding import SHARDINGS


def parallel_inputs() -> dict:
    """The parallelism options shared by the loader and the apply node."""
    return {
        "parallelism_type": (list(MODES), {"default": "auto", "tooltip":
            "none: one device. data_parallel: a replica per device, each model call's batch (CFG's cond / uncond) "
            "split over them. block_distribution: the transformer blocks spread over the devices (models bigger "
            "than one GPU). distributed: one worker process per device, sequence parallel (Ulysses) attention "
            "speeds up one video. auto: chosen from the model size and free memory."}),
        "gpu_ids": ("STRING", {"default": "0,1", "tooltip":
            "Devices to use: '0,1', 'cuda:0,cuda:1', 'all', or 'cpu,cpu' to simulate several devices on the CPU. "
            "The first one is the main device (inputs, embeddings, head). A GPU named twice ('0,0') is shared "
            "by data_parallel / block_distribution (each entry gets half its free memory); distributed needs "
            "distinct GPUs."}),
        "enable_block_distribution": ("BOOLEAN", {"default": False, "tooltip":
            "Kept for workflows written for the original guide: true means parallelism_type block_distribution."}),
        "memory_reserve_gb": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
            "GiB left free on every device for activations when planning block placement and for auto."}),
    }


def optional_inputs() -> dict:
    """Optional inputs (workflows saved before them keep working)."""
    return {"weight_sharding": (list(SHARDINGS), {"default": "auto", "tooltip":
            "distributed only. replicate: every worker holds the whole model. fsdp: every Wan block's weights are "
            "split over the workers (FSDP2), each block gathered just before it runs, for models bigger than one "
            "GPU. auto: fsdp when a replica plus memory_reserve_gb does not fit a device."}),
            "remote_workers": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip":
            "distributed only: workers on other machines, joining with the command printed on the console (same "
            "pack and model file path there; needs master_addr / master_port reachable). 0: this machine only."}),
            "master_addr": ("STRING", {"default": "127.0.0.1", "tooltip":
            "This machine's address for remote workers (127.0.0.1 keeps everything local)."}),
            "master_port": ("INT", {"default": 29500, "min": 1024, "max": 65534, "tooltip":
            "Rendezvous port for remote workers (the next port carries commands)."})}


def load_device_input() -> dict:
    return {"load_device": (list(LOAD_DEVICES), {"default": "main_device", "tooltip":
            "main_device: weights stay on the devices between runs (ComfyUI's default). offload_device: weights "
            "go back to the CPU after every sampling run, freeing the GPUs for other models."})}


class MultiGPULoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (folder_paths.get_filename_list("diffusion_models"), {"tooltip":
                          "A Wan 2.1 / 2.2 model file in ComfyUI's models/diffusion_models folder."}),
            "base_precision": (list(WEIGHT_DTYPES), {"default": "default", "tooltip":
                               "Weight dtype. default: ComfyUI's choice for the file and device, as its Load "
                               "Diffusion Model node makes it (an fp8_scaled file keeps its fp8 weights, half the "
                               "memory of bf16). fp8 weights on a device without fp8 kernels (the CPU, older GPUs) "
                               "are computed with manual cast."}),
            **load_device_input(),
            **parallel_inputs(),
        }, "optional": optional_inputs()}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "parallel/multi-gpu"
    DESCRIPTION = "Load a Wan model and run it over several GPUs; the MODEL works with ComfyUI's own samplers."

    def load(self, unet_name, base_precision, load_device, parallelism_type, gpu_ids,
             enable_block_distribution, memory_reserve_gb, weight_sharding="auto", remote_workers=0,
             master_addr="127.0.0.1", master_port=29500):
        request = MultiGPURequest(parallelism_type, gpu_ids, enable_block_distribution, memory_reserve_gb,
                                  load_device, weight_sharding, remote_workers, master_addr, master_port,
                                  folder_paths.get_full_path("diffusion_models", unet_name))
        mode = requested_mode(request)
        dtype = weight_dtype(base_precision)
        model = load_diffusion_file(unet_name, dtype, non_dynamic_for=None if mode == "none" else mode)
        return (apply_multi_gpu(model, resolve(model, request)),)


class MultiGPUApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A MODEL from ComfyUI's loaders; a LoRA loader before or after this "
                                "node applies in every mode. block_distribution and distributed need a Wan model. "
                                "MODELs of other packs' loaders (GGUF) are not tested."}),
            **load_device_input(),
            **parallel_inputs(),
        }, "optional": optional_inputs()}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "parallel/multi-gpu"
    DESCRIPTION = "Run an existing MODEL over several GPUs (a clone; the input MODEL is unchanged)."

    def apply(self, model, load_device, parallelism_type, gpu_ids, enable_block_distribution, memory_reserve_gb,
              weight_sharding="auto", remote_workers=0, master_addr="127.0.0.1", master_port=29500):
        request = MultiGPURequest(parallelism_type, gpu_ids, enable_block_distribution, memory_reserve_gb,
                                  load_device, weight_sharding, remote_workers, master_addr, master_port)
        return (apply_multi_gpu(model, resolve(model, request)),)


NODE_CLASS_MAPPINGS = {
    "MultiGPULoader": MultiGPULoader,
    "MultiGPUApply": MultiGPUApply,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MultiGPULoader": "WanVideo Multi-GPU Loader",
    "MultiGPUApply": "Multi-GPU Apply",
}
