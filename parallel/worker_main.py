"""Entry point of a worker process: `python <pack>/parallel/worker_main.py` (run by path).

Started by WorkerGroup with subprocess, or by hand on another machine (see launch.py for the
command). Settings come from torchrun-style environment variables (RANK, WORLD_SIZE, ...).
It first connects to the caller with the standard library alone, so that any later failure
(a broken install, torch failing to import, a bad device) goes back to the caller as an
error with its traceback instead of a bare exit code. Then it imports the pack under the
alias `comfyui_parallel` (whatever the pack's folder is called), puts ComfyUI's folder
($COMFYUI_DIR) on sys.path for worker functions that need `comfy`, and serves. It never runs
ComfyUI's main.py: a worker starts in about the time torch takes to import.
"""
import importlib.util
import os
import pickle
import socket
import sys
import time
import traceback
from multiprocessing.connection import Client
from pathlib import Path

HERE = Path(__file__).resolve().parent


def connect(env=os.environ):
    """Connect to the caller's channel, retrying until the start timeout (machines start in
    any order), and say hello. Messages here are plain pickled dicts."""
    host, _, port = env["COMFYUI_PARALLEL_CONTROL"].rpartition(":")
    if "COMFYUI_PARALLEL_AUTHKEY" not in env:  # a remote worker: the key from its file, for this process
        env["COMFYUI_PARALLEL_AUTHKEY"] = Path(env["COMFYUI_PARALLEL_AUTHKEY_FILE"]).expanduser().read_text().strip()
    deadline = time.monotonic() + float(env.get("COMFYUI_PARALLEL_START_TIMEOUT_S", "120"))
    while True:
        try:
            conn = Client((host, int(port)), authkey=bytes.fromhex(env["COMFYUI_PARALLEL_AUTHKEY"]))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    conn.send_bytes(pickle.dumps({"op": "hello", "rank": int(env["RANK"]), "pid": os.getpid(),
                                  "host": socket.gethostname()}))
    return conn


def prepare_imports() -> None:
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
    conn = connect()
    try:
        prepare_imports()
        from comfyui_parallel.parallel.worker_runtime import WorkerSettings, run_worker

        settings = WorkerSettings.from_environ()
    except Exception as exc:
        conn.send_bytes(pickle.dumps({"op": "fatal", "message": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()}))
        return 1
    return run_worker(settings, conn)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (seconds with torch loaded); nothing is left to save
