"""Worker groups started from inside ComfyUI: every worker gets the server's ComfyUI flags.

A worker imports ComfyUI without its server; `group_config` puts this ComfyUI's forwarded
command-line settings (attention backend, --fast, VRAM mode: models/comfy/flags.py) in every
worker's environment, so each feature's workers compute what this server would. Used by every
pack feature that starts workers (distributed Wan, step pipeline, SeedVR, SDXL batch).
"""
from ...parallel.launch import WorkerGroupConfig
from .runtime import worker_flags_env


def group_config(devices, comfyui_dir: str, **options) -> WorkerGroupConfig:
    """A WorkerGroupConfig for `devices` with this ComfyUI's folder and flags (options: any other field)."""
    env = {**worker_flags_env(), **options.pop("env", {})}
    return WorkerGroupConfig(devices=[str(device) for device in devices], comfyui_dir=comfyui_dir, env=env, **options)
