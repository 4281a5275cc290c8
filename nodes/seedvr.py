"""SeedVR Loader and SeedVR Single-GPU Upscaler: video restoration / upscaling with SeedVR(2).

The upscaler's optional `gpu_ids` spreads the frame chunks over several devices (one worker
each, models/seedvr/multi_gpu_server.py); the node id keeps its historical name.
"""
import dataclasses
import os
from pathlib import Path

import folder_paths
import torch

from ..models.comfy import management as host
from ..models.seedvr.color_fix import METHODS
from ..models.seedvr.config import VARIANTS
from ..models.seedvr.loading import load_dit, load_vae
from ..models.seedvr.pipeline import Hooks, SeedVRModel, UpscaleSettings, upscale
from ..models.seedvr.vae import TileConfig
from ..parallel.devices import parse_gpu_ids
from ..utils.errors import Cancelled, InputError

FOLDER = "seedvr"
DIT_FOLDERS = (FOLDER, "diffusion_models")
VAE_FOLDERS = (FOLDER, "vae")
PRECISIONS = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register_folder() -> None:
    """A `seedvr` model folder (models/seedvr), beside any paths a user configured for it."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, FOLDER)
        folder_paths.folder_names_and_paths[FOLDER] = ([path], set(folder_paths.supported_pt_extensions))


register_folder()


def _files(folders) -> list:
    names = []
    for folder in folders:
        names += [n for n in folder_paths.get_filename_list(folder) if n not in names]
    return sorted(names)


def _find(name: str, folders, input_name: str):
    for folder in folders:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return Path(path)
    raise InputError(input_name, f"'{name}' not found", "a file in the models folders " + ", ".join(folders))


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError("precision", f"unknown precision {precision!r}", ", ".join(PRECISIONS))
    if PRECISIONS[precision] is not None:
        return PRECISIONS[precision]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


class SeedVRLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit_name": (_files(DIT_FOLDERS), {"tooltip": "SeedVR / SeedVR2 DiT checkpoint (official seedvr2_ema_3b.pth, "
                         "Comfy-Org's seedvr2_3b_fp16 / _fp8_e4m3fn / 7b_sharp with their baked-in text embeddings, "
                         "other .safetensors conversions) from models/seedvr or models/diffusion_models."}),
            "vae_name": (_files(VAE_FOLDERS), {"tooltip": "SeedVR's causal video VAE (ema_vae.pth) from models/seedvr "
                         "or models/vae."}),
            "variant": (["auto", *VARIANTS], {"default": "auto", "tooltip": "auto reads the size from the weights "
                        "and SeedVR vs SeedVR2 from the file name; a named variant is checked key by key."}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "Compute precision of DiT and VAE. auto: "
                          "bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."}),
            "blocks_to_swap": ("INT", {"default": 0, "min": 0, "max": 36, "tooltip": "DiT blocks kept in host memory and "
                               "streamed to the GPU when needed (3B has 32 blocks, 7B 36). More = less VRAM, slower."}),
            "vae_tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": "Spatial VAE tile in "
                              "pixels; 0 = no tiling. Tiles bound VAE memory at large resolutions."}),
            "vae_tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 8, "tooltip": "Overlap of VAE "
                                 "tiles in pixels, blended linearly."}),
        }}

    RETURN_TYPES = ("SEEDVR_MODEL",)
    FUNCTION = "load"
    CATEGORY = "parallel/seedvr"
    DESCRIPTION = "Load a SeedVR / SeedVR2 (3B or 7B) DiT and the video VAE with strict key matching."

    def load(self, dit_name, vae_name, variant, precision, blocks_to_swap, vae_tile_size, vae_tile_overlap):
        device = host.torch_device()
        dtype = _dtype(precision, device)
        if vae_tile_size and vae_tile_overlap >= vae_tile_size:
            raise InputError("vae_tile_overlap", f"{vae_tile_overlap} for tiles of {vae_tile_size}",
                             f"less than vae_tile_size ({vae_tile_size})")
        dit, name, sampler, embeddings = load_dit(_find(dit_name, DIT_FOLDERS, "dit_name"), variant, dtype)
        if blocks_to_swap > len(dit.blocks):
            raise InputError("blocks_to_swap", f"{blocks_to_swap} for a DiT of {len(dit.blocks)} blocks",
                             f"0..{len(dit.blocks)}")
        vae = load_vae(_find(vae_name, VAE_FOLDERS, "vae_name"), dtype)
        vae.tiles = TileConfig(vae_tile_size, vae_tile_overlap)
        model = SeedVRModel(dit, vae, name, sampler, device=device, offload_device=torch.device("cpu"),
                            blocks_to_swap=blocks_to_swap, embeddings=embeddings)
        baked = f", baked-in {' / '.join(embeddings)} embeddings" if embeddings else ""
        print(f"[SeedVR] loaded {name} DiT ({len(dit.blocks)} blocks, {dtype}) on {device}, "
              f"blocks_to_swap={blocks_to_swap}{baked}")
        return (model,)


def _embedding(conditioning, input_name: str):
    """The [tokens, dim] tensor of a CONDITIONING ([[cond [1, T, D], {...}]]), or None."""
    if conditioning is None:
        return None
    try:
        return conditioning[0][0]
    except (IndexError, TypeError, KeyError):
        raise InputError(input_name, "is not a conditioning with an embedding",
                         "CONDITIONING from LoadConditioningFile") from None


def _percent_bar():
    """ComfyUI's progress bar in percent, updated (one websocket message) only when the percentage moves."""
    bar, shown = host.progress_bar(100), [-1]

    def progress(done: int, total: int) -> None:
        percent = int(100 * done / total)
        if percent != shown[0]:
            shown[0] = percent
            bar.update_absolute(percent, 100)
    return progress


class SeedVRUpscaler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Video frames (or one image) to restore / upscale."}),
            "seedvr_model": ("SEEDVR_MODEL", {"tooltip": "From SeedVR Loader."}),
            "res_h": ("INT", {"default": 720, "min": 16, "max": 8192, "step": 16, "tooltip": "Target height; with "
                      "res_w it sets the output area, the input's aspect ratio is kept (sides cropped to x16)."}),
            "res_w": ("INT", {"default": 1280, "min": 16, "max": 8192, "step": 16, "tooltip": "Target width (see res_h)."}),
            "cfg_scale": ("FLOAT", {"default": 6.5, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Classifier-free "
                          "guidance. SeedVR: 6.5; SeedVR2: 1.0 (no negative pass)."}),
            "sample_steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Euler steps. SeedVR: 50; "
                             "SeedVR2 is one-step: 1."}),
            "seed": ("INT", {"default": 666, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed (reference: 666)."}),
            "batch_size": ("INT", {"default": 5, "min": 1, "max": 1025, "step": 4, "tooltip": "Frames per chunk, 4n+1 "
                           "(1, 5, 9, ...). Longer chunks are more consistent over time and use more memory."}),
            "temporal_overlap": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "Frames shared by consecutive "
                                 "chunks, cross-faded to hide seams."}),
            "color_fix": (list(METHODS), {"default": "wavelet", "tooltip": "Match colours to the input: wavelet (low "
                          "frequencies from the input), adain (channel mean/std) or none."}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "Positive text embedding (the official pos_emb.pt through "
                         "Load Conditioning). Optional when the checkpoint carries its own (Comfy-Org's files)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative text embedding (neg_emb.pt); used when cfg_scale != 1. "
                         "Optional when the checkpoint carries its own."}),
            "gpu_ids": ("STRING", {"default": "", "tooltip": "Empty: ComfyUI's device. One device ('1', 'cuda:1'): "
                        "run there. Several ('0,1', 'all', or 'cpu,cpu' to simulate them): the frame chunks are "
                        "spread over one worker per device, the result equals one device's."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "parallel/seedvr"
    DESCRIPTION = "Restore / upscale video frames with SeedVR on one GPU (block swap and tiled VAE from the loader), or with the frame chunks spread over several (gpu_ids)."

    def upscale(self, images, seedvr_model, res_h, res_w, cfg_scale, sample_steps, seed, batch_size,
                temporal_overlap, color_fix, positive=None, negative=None, gpu_ids=""):
        if not isinstance(seedvr_model, SeedVRModel):
            raise InputError("seedvr_model", f"got {type(seedvr_model).__name__}", "the output of SeedVR Loader")
        settings = UpscaleSettings(res_h, res_w, cfg_scale, sample_steps, seed, batch_size, temporal_overlap, color_fix)
        settings.check()
        devices = parse_gpu_ids(gpu_ids) if gpu_ids.strip() else [seedvr_model.device]
        if seedvr_model.variant.startswith("seedvr2") and (sample_steps != 1 or cfg_scale != 1.0):
            print(f"[SeedVR] note: {seedvr_model.variant} is a one-step model (reference: sample_steps 1, "
                  f"cfg_scale 1.0); running {sample_steps} steps at cfg {cfg_scale} as asked")
        if any(d.type != "cpu" for d in devices):
            host.unload_all_models()
        progress = _percent_bar()
        pos, neg = _embedding(positive, "positive"), _embedding(negative, "negative")
        if len(devices) == 1:
            model = dataclasses.replace(seedvr_model, device=devices[0])
            out = upscale(model, images, pos, neg, settings, Hooks(progress=progress, check_cancel=host.raise_if_interrupted))
        else:
            out = self._upscale_multi(seedvr_model, images, pos, neg, settings, devices, progress)
        host.empty_cache()
        return (out,)

    @staticmethod
    def _upscale_multi(model, images, pos, neg, settings, devices, progress):
        from ..models.seedvr.multi_gpu_server import upscale_multi

        print(f"[SeedVR] spreading the frame chunks over {len(devices)} workers: {', '.join(map(str, devices))}")
        try:
            return upscale_multi(model, images, pos, neg, settings, devices, host.comfyui_dir(),
                                 on_progress=progress, should_cancel=host.interrupted)
        except Cancelled:
            host.raise_if_interrupted()  # ComfyUI's own "interrupted"
            raise host.INTERRUPT() from None


NODE_CLASS_MAPPINGS = {"SeedVRLoader": SeedVRLoader, "SeedVRUpscaler": SeedVRUpscaler}
NODE_DISPLAY_NAME_MAPPINGS = {"SeedVRLoader": "SeedVR Loader", "SeedVRUpscaler": "SeedVR Single-GPU Upscaler"}
