"""A ComfyUI custom-node file that turns on devtools/simulated_devices.py for its whole server process.

The test harness (devtools/comfy_server.py, `simulated_devices=True`) links this file into a test
server's custom_nodes. ComfyUI imports it with the other custom nodes, before it starts its prompt
worker thread, so that thread and every thread started from it compute with simulated devices:
"cpu,cpu" in gpu_ids then means two devices that really hold their own tensors. It adds no node.

With COMFYUI_PARALLEL_SIMULATED_GPU=cpu:N in the environment, ComfyUI's own compute device
(`comfy.model_management.get_torch_device`, `cpu` under --cpu) becomes that simulated device, as
a server with a GPU has one: models load there from the host, so the Offload nodes' swapped
blocks really are copied to it. This replaces a ComfyUI function, which only a test harness may do.
"""
import importlib.util
import logging
import os
import sys
from pathlib import Path

import torch

NAME = "comfyui_parallel_simulated_devices"
GPU_ENV = "COMFYUI_PARALLEL_SIMULATED_GPU"
NODE_CLASS_MAPPINGS: dict = {}


def _load_tool():
    """devtools/simulated_devices.py by path, under a name of its own (no generic `devtools` in sys.modules)."""
    spec = importlib.util.spec_from_file_location(NAME, Path(__file__).resolve().with_name("simulated_devices.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


def _simulate_comfyuis_gpu(device: torch.device) -> None:
    import comfy.model_management

    comfy.model_management.get_torch_device = lambda: device


_load_tool().enable_process_wide()
logging.info("ComfyUI-Parallel test harness: simulated devices on (cpu:1, cpu:2, ... hold their own tensors)")
if os.environ.get(GPU_ENV):
    _simulate_comfyuis_gpu(torch.device(os.environ[GPU_ENV]))
    logging.info("ComfyUI-Parallel test harness: ComfyUI computes on the simulated device %s", os.environ[GPU_ENV])
