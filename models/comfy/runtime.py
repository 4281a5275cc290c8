"""Import ComfyUI outside its server: in worker processes, tests and tools.

ComfyUI's model management picks its device at import time; on a machine without CUDA
it must be told `--cpu` first, exactly as the server is, and a worker gets the server's own
flags (attention backend, --fast, VRAM mode: models/comfy/flags.py). Call `ensure_comfy()`
before importing any `comfy.*` module outside the server.
"""
import os
import sys
from pathlib import Path


def find_comfyui_dir(hint: str | os.PathLike | None = None) -> Path:
    """The ComfyUI folder: the hint, $COMFYUI_DIR, the folder above custom_nodes/, or .comfyui/."""
    pack_dir = Path(__file__).resolve().parents[2]
    candidates = [hint, os.environ.get("COMFYUI_DIR")]
    if pack_dir.parent.name == "custom_nodes":
        candidates.append(pack_dir.parent.parent)
    candidates.append(pack_dir / ".comfyui")
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "model_management.py").is_file():
            return Path(candidate).resolve()
    raise RuntimeError("ComfyUI not found: set COMFYUI_DIR to the folder holding main.py")


def ensure_comfy(comfyui_dir: str | os.PathLike | None = None, cpu: bool | None = None, novram: bool = False) -> Path:
    """Put ComfyUI on sys.path and configure its args (cpu when there is no GPU; novram: weights stay
    in CPU RAM and stream to the GPU layer by layer). Settings apply only before ComfyUI is imported."""
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy.model_management"].__file__).resolve().parents[1]
    folder = find_comfyui_dir(comfyui_dir)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    import torch
    import comfy.cli_args
    from comfy.cli_args import args

    from .flags import apply_from_env

    apply_from_env(args, comfy.cli_args)  # a worker: the server's flags (models/comfy/flags.py)
    args.cpu = (args.cpu or not torch.cuda.is_available()) if cpu is None else cpu
    args.novram = args.novram or novram
    return folder


def comfy_flags() -> dict:
    """The running ComfyUI's forwarded command-line settings (models/comfy/flags.py), as plain data."""
    ensure_comfy()
    from comfy.cli_args import args

    from .flags import flags_of

    return flags_of(args)


def worker_flags_env() -> dict:
    """The environment entry that starts a worker with this process's ComfyUI settings."""
    from .flags import env_entry

    return env_entry(comfy_flags())
