"""Import ComfyUI outside its server: in worker processes, tests and tools.

ComfyUI's model management picks its device at import time; on a machine without CUDA
it must be told `--cpu` first, exactly as the server is. Call `ensure_comfy()` before
importing any `comfy.*` module outside the server.
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
    from comfy.cli_args import args

    args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    args.novram = args.novram or novram
    return folder
