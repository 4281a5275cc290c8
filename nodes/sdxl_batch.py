"""SDXL Batch Generator: a prompt list into an image dataset over every GPU, resumable.

Declares the inputs, checks all of them before any model work (prompt list, paths, LoRA,
devices, worker count), then runs models/image_batch/server.py and returns a preview of the
first images and the manifest's path.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import folder_paths

from ..models.comfy import management as host
from ..models.comfy.sampling import SAMPLERS, SCHEDULERS
from ..models.image_batch.generate import GenerateSettings
from ..models.image_batch.server import MODES, BatchJob, Reporter, run_job, worker_pool
from ..parallel.devices import parse_gpu_ids
from ..utils.dataset import Dataset
from ..utils.errors import Cancelled, InputError
from ..utils.files import existing_file, resolve_inside
from ..utils.prompts import ImageTask, expand_tasks, gather_rows, parse_text, read_prompt_file

PREVIEW_IMAGES = 16


def _int(default, low, high, tip, step=1):
    return ("INT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tip})


@dataclass
class Checked:
    """The node's inputs after validation: what the run needs."""
    job: BatchJob
    tasks: list[ImageTask]
    folder: Path
    remote: dict


class SDXLBatchGenerator:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (folder_paths.get_filename_list("checkpoints"), {"tooltip":
                          "A checkpoint (UNet + CLIP + VAE) from ComfyUI's checkpoints folder, loaded by ComfyUI's own loader."}),
            "prompts": ("STRING", {"multiline": True, "default": "a photo of a cat\na photo of a dog", "tooltip":
                        "One prompt per line (blank lines skipped). Used together with prompts_file."}),
            "prompts_file": ("STRING", {"default": "", "tooltip":
                             "Optional .txt (one per line), .csv or .jsonl file in ComfyUI's input folder with "
                             "columns prompt, optional negative_prompt, seed, id."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                                "Negative prompt for rows that do not bring their own."}),
            "lora_name": (["None"] + folder_paths.get_filename_list("loras"), {"tooltip":
                          "LoRA or DoRA from the loras folder, applied with ComfyUI's LoRA loader; None for none."}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip":
                              "LoRA strength on both the model and the text encoder."}),
            "width": _int(1024, 64, 8192, "Image width in pixels (multiple of 8).", 8),
            "height": _int(1024, 64, 8192, "Image height in pixels (multiple of 8).", 8),
            "steps": _int(25, 1, 10000, "Sampling steps per image."),
            "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Classifier-free guidance scale."}),
            "sampler_name": (SAMPLERS, {"tooltip": "ComfyUI sampler."}),
            "scheduler": (SCHEDULERS, {"tooltip": "ComfyUI noise schedule."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip":
                     "Base seed: a row without its own seed gets seed + its image number; same seed, same image in every mode."}),
            "images_per_prompt": _int(1, 1, 10000, "Images per prompt (consecutive seeds)."),
            "batch_size": _int(1, 1, 256, "Images of one prompt sampled together in one call."),
            "mode": (list(MODES), {"tooltip":
                     "multi_process: a worker process per GPU taking prompts from one queue (fastest); "
                     "data_parallel: one pipeline, each model call's batch split over the GPUs; single: one GPU."}),
            "gpu_ids": ("STRING", {"default": "all", "tooltip":
                        "GPUs to use: 'all', '0,1', 'cuda:0,cuda:1'; 'cpu' or 'cpu,cpu' for simulated devices. single uses the first."}),
            "max_workers": _int(0, 0, 64, "multi_process: at most this many workers (0 = one per device); more than the devices is refused."),
            "cpu_offload": ("BOOLEAN", {"default": False, "tooltip":
                            "multi_process workers run ComfyUI in novram mode: weights stay in CPU RAM and stream to the GPU "
                            "layer by layer (fits smaller GPUs, slower). single / data_parallel follow the server's own "
                            "--lowvram / --novram setting."}),
            "output_subfolder": ("STRING", {"default": "sdxl_dataset", "tooltip":
                                 "Folder under ComfyUI's output folder for the images and manifest.jsonl."}),
            "resume": ("BOOLEAN", {"default": True, "tooltip":
                       "Skip (prompt, seed) pairs already in the manifest; off regenerates everything."}),
        }, "optional": {
            "remote_workers": _int(0, 0, 1024, "multi_process: workers on other machines that will join with the "
                                   "command printed on the console (needs master_addr / master_port reachable)."),
            "master_addr": ("STRING", {"default": "127.0.0.1", "tooltip":
                            "This machine's address for remote workers (127.0.0.1 keeps everything local)."}),
            "master_port": _int(29500, 1024, 65534, "Rendezvous port for remote workers (the next port carries commands)."),
        }}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("preview", "manifest_path")
    FUNCTION = "generate"
    CATEGORY = "parallel/generation"
    OUTPUT_NODE = True
    DESCRIPTION = ("Generate an image dataset from a prompt list over all GPUs: PNGs with their settings in text chunks "
                   "and a manifest.jsonl, written atomically; rerun with resume to finish an interrupted job.")

    def generate(self, remote_workers=0, master_addr="127.0.0.1", master_port=29500, **inputs):
        checked = check_inputs(inputs, remote_workers, master_addr, master_port)
        dataset = Dataset.open(checked.folder, inputs["resume"])
        bar = host.progress_bar(len(checked.tasks))
        reporter = Reporter(len(checked.tasks), on_progress=lambda done, total: bar.update_absolute(done, total),
                            should_cancel=host.interrupted)
        try:
            if checked.job.mode == "multi_process" and checked.remote:
                print_join_commands(worker_pool(checked.job, checked.remote), checked.job.comfyui_dir)
            run_job(checked.job, dataset, checked.tasks, reporter, remote=checked.remote)
        except Cancelled:
            host.raise_if_interrupted()
            raise host.INTERRUPT()
        return (preview(dataset, checked.tasks), str(dataset.manifest_path))


def check_inputs(inputs: dict, remote_workers: int, master_addr: str, master_port: int) -> Checked:
    """Every input checked before any model work; an InputError names the input and what is allowed."""
    folder = resolve_inside(folder_paths.get_output_directory(), inputs["output_subfolder"], "output_subfolder")
    tasks = prompt_tasks(inputs)
    if inputs["width"] % 8 or inputs["height"] % 8:
        raise InputError("width" if inputs["width"] % 8 else "height", "is not a multiple of 8", "multiples of 8")
    mode = inputs["mode"]
    if mode not in MODES:
        raise InputError("mode", f"'{mode}' is not a mode", ", ".join(MODES))
    devices = worker_devices(parse_gpu_ids(inputs["gpu_ids"]), mode, inputs["max_workers"])
    if remote_workers and mode != "multi_process":
        raise InputError("remote_workers", f"{remote_workers} remote workers with mode {mode}", "0 unless mode is multi_process")
    lora_name = inputs["lora_name"]
    settings = GenerateSettings(ckpt_name=inputs["ckpt_name"], width=inputs["width"], height=inputs["height"],
                                steps=inputs["steps"], cfg=inputs["cfg"], sampler_name=inputs["sampler_name"],
                                scheduler=inputs["scheduler"], lora_name=lora_name, lora_strength=inputs["lora_strength"])
    job = BatchJob(ckpt_path=model_path("checkpoints", inputs["ckpt_name"], "ckpt_name"), settings=settings, mode=mode,
                   devices=devices, lora_path=None if lora_name == "None" else model_path("loras", lora_name, "lora_name"),
                   batch_size=inputs["batch_size"], cpu_offload=inputs["cpu_offload"],
                   comfyui_dir=str(host.comfyui_dir()))
    remote = {"remote_ranks": remote_workers, "master_addr": master_addr, "master_port": master_port} if remote_workers else {}
    if remote and os.environ.get("COMFYUI_PARALLEL_AUTHKEY"):
        remote["authkey"] = os.environ["COMFYUI_PARALLEL_AUTHKEY"]  # fixed key: remote workers may start first
    return Checked(job, tasks, folder, remote)


def prompt_tasks(inputs: dict) -> list[ImageTask]:
    file_rows = []
    if inputs["prompts_file"].strip():
        path = existing_file(folder_paths.get_input_directory(), inputs["prompts_file"].strip(), "prompts_file")
        file_rows = read_prompt_file(path, "prompts_file")
    rows = gather_rows(parse_text(inputs["prompts"], "prompts"), file_rows)
    return expand_tasks(rows, inputs["seed"], inputs["images_per_prompt"], inputs["negative_prompt"])


def worker_devices(devices: list[torch.device], mode: str, max_workers: int) -> list[torch.device]:
    """The devices this mode uses: the first for single, at most max_workers for multi_process."""
    if max_workers > len(devices):
        raise InputError("max_workers", f"{max_workers} workers for {len(devices)} device(s) in gpu_ids",
                         f"0 (one per device) to {len(devices)}")
    if mode == "single":
        return devices[:1]
    return devices[:max_workers] if mode == "multi_process" and max_workers else devices


def model_path(folder: str, name: str, input_name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        shown = ", ".join(folder_paths.get_filename_list(folder)[:20]) or "none"
        raise InputError(input_name, f"'{name}' is not in ComfyUI's {folder} folder", shown)
    return path


def print_join_commands(group, comfyui_dir: str) -> None:
    """The command each remote worker runs on its machine (torchrun-style environment)."""
    for rank in range(len(group.config.devices), group.world_size):
        command = group.join_command(rank, comfyui_dir=comfyui_dir)
        print(f"[SDXLBatchGenerator] start remote worker {rank} on its machine with:\n  {command}")


def preview(dataset: Dataset, tasks: list[ImageTask]) -> torch.Tensor:
    """The first images of the dataset (in prompt-list order) as an IMAGE batch."""
    images = []
    for task in tasks:
        path = dataset.folder / task.file_name
        if task.key in dataset.records and path.is_file():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            if not images or pixels.shape == images[0].shape:  # resumed images of another size are left out
                images.append(pixels)
        if len(images) == PREVIEW_IMAGES:
            break
    if not images:
        return torch.zeros(1, 64, 64, 3)
    return torch.from_numpy(np.stack(images))


NODE_CLASS_MAPPINGS = {"SDXLBatchGenerator": SDXLBatchGenerator}
NODE_DISPLAY_NAME_MAPPINGS = {"SDXLBatchGenerator": "SDXL Batch Generator"}
