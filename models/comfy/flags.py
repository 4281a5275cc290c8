"""The server's ComfyUI command-line settings, forwarded to worker processes.

A worker imports ComfyUI without its server, so ComfyUI's `args` there are the defaults. The
settings that decide what a worker computes, and how, travel to it as JSON in the environment
($COMFYUI_PARALLEL_COMFY_FLAGS) and are set before ComfyUI's model management is imported
(`ensure_comfy`): the attention backend (sage / flash / pytorch / split / quad, xformers off,
upcasting), `--fast`, `--deterministic`, `--reserve-vram`, the VRAM mode (`--gpu-only`,
`--highvram`, `--normalvram`, `--lowvram`, `--novram`, `--cpu`) and the precision / memory
switches below. Only names the running ComfyUI has are sent or set.
"""
import enum
import json
import os

ENV = "COMFYUI_PARALLEL_COMFY_FLAGS"
ATTENTION = ("use_sage_attention", "use_flash_attention", "use_pytorch_cross_attention", "use_split_cross_attention",
             "use_quad_cross_attention", "disable_xformers", "force_upcast_attention", "dont_upcast_attention")
VRAM_MODE = ("gpu_only", "highvram", "normalvram", "lowvram", "novram", "cpu", "reserve_vram", "disable_smart_memory")
COMPUTE = ("fast", "deterministic", "force_fp32", "force_fp16", "force_channels_last", "supports_fp8_compute",
           "async_offload", "disable_async_offload", "force_non_blocking", "disable_pinned_memory")
FORWARDED = ATTENTION + VRAM_MODE + COMPUTE


def _plain(value):
    """JSON-able: an enum as its value, a set (`--fast`'s features) as a sorted list of values."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(_plain(item) for item in value)
    return value


def flags_of(args) -> dict:
    """The forwarded settings of a ComfyUI `args` namespace, as plain data."""
    return {name: _plain(getattr(args, name)) for name in FORWARDED if hasattr(args, name)}


def apply_flags(args, flags: dict, cli_args_module) -> None:
    """Set forwarded settings on a worker's `args` (`--fast` back to ComfyUI's PerformanceFeature set)."""
    features = getattr(cli_args_module, "PerformanceFeature", None)
    for name, value in flags.items():
        if name not in FORWARDED or not hasattr(args, name):
            continue
        if name == "fast" and isinstance(value, list) and features is not None:
            value = {features(item) for item in value}
        setattr(args, name, value)


def apply_from_env(args, cli_args_module, env=os.environ) -> bool:
    """Apply the settings a server put in the environment; whether there were any."""
    text = env.get(ENV)
    if text:
        apply_flags(args, json.loads(text), cli_args_module)
    return bool(text)


def env_entry(flags: dict) -> dict:
    """The environment entry that gives a worker these settings."""
    return {ENV: json.dumps(flags)}
