"""A ComfyUI custom-node file that turns on devtools/simulated_devices.py for its whole server process.

The test harness (devtools/comfy_server.py, `simulated_devices=True`) links this file into a test
server's custom_nodes. ComfyUI imports it with the other custom nodes, before it starts its prompt
worker thread, so that thread and every thread started from it compute with simulated devices:
"cpu,cpu" in gpu_ids then means two devices that really hold their own tensors. It adds no node.
"""
import importlib.util
import logging
import sys
from pathlib import Path

NAME = "comfyui_parallel_simulated_devices"
NODE_CLASS_MAPPINGS: dict = {}


def _load_tool():
    """devtools/simulated_devices.py by path, under a name of its own (no generic `devtools` in sys.modules)."""
    spec = importlib.util.spec_from_file_location(NAME, Path(__file__).resolve().with_name("simulated_devices.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


_load_tool().enable_process_wide()
logging.info("ComfyUI-Parallel test harness: simulated devices on (cpu:1, cpu:2, ... hold their own tensors)")
