"""Entry point of a worker process: `python <pack>/parallel/worker_main.py` (run by path).

Started by WorkerGroup with subprocess, or by hand on another machine (see launch.py for the
command). It imports the pack under the alias `comfyui_parallel` (whatever the pack's folder
is called), puts ComfyUI's folder ($COMFYUI_DIR) on sys.path for worker functions that need
`comfy`, and never runs ComfyUI's main.py: a worker starts in about the time torch takes to
import. Settings come from torchrun-style environment variables (RANK, WORLD_SIZE, ...).
"""
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _prepare_imports() -> None:
    """Drop this script's folder from sys.path (its modules must not become top-level names),
    add ComfyUI's folder, register the pack alias."""
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if comfyui_dir and Path(comfyui_dir).is_dir() and comfyui_dir not in sys.path:
        sys.path.append(comfyui_dir)
    spec = importlib.util.spec_from_file_location("_comfyui_parallel_alias", HERE.parent / "utils" / "pack_alias.py")
    alias = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alias)
    alias.register()


def main() -> int:
    _prepare_imports()
    from comfyui_parallel.parallel.worker_runtime import WorkerSettings, run_worker

    return run_worker(WorkerSettings.from_environ())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (seconds with torch loaded); nothing is left to save
