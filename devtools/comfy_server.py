"""A real ComfyUI server as a subprocess, for tests and the demo.

Starts ComfyUI's main.py with its own base directory (models/, custom_nodes/, input/,
output/ under it), `--cpu` when there is no GPU, on a free port; the pack is linked into
its custom_nodes (with `simulated_devices`, devtools/simulated_devices_node.py too).
Offers the API calls a script would make: post a prompt, follow it on
the websocket, read /history, interrupt. `stop()` ends the server and every process it
started, checked by pid.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "ComfyUI-Parallel"
SIMULATED_DEVICES_NODE = "comfyui_parallel_simulated_devices.py"
END_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui")).resolve()


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    history: dict
    seconds: float
    progress: list = field(default_factory=list)  # (node, value, max) from the websocket

    @property
    def messages(self) -> list:
        return self.history.get("status", {}).get("messages", [])

    @property
    def error_text(self) -> str:
        for kind, data in self.messages:
            if kind == "execution_error":
                return f"{data.get('exception_type')}: {data.get('exception_message')}"
        return ""

    def output_files(self, base_dir: Path) -> list[Path]:
        files = []
        for node_output in self.history.get("outputs", {}).values():
            for items in node_output.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        folder = base_dir / item.get("type", "output") / item.get("subfolder", "")
                        files.append(folder / item["filename"])
        return files


class ComfyServer:
    def __init__(self, base_dir: Path, comfyui_dir: Path | None = None, port: int | None = None,
                 extra_args: list[str] | None = None, env: dict | None = None, simulated_devices: bool = False):
        self.base_dir = Path(base_dir).resolve()
        self.comfyui_dir = Path(comfyui_dir or default_comfyui_dir()).resolve()
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.env = env or {}
        self.simulated_devices = simulated_devices  # devtools/simulated_devices_node.py in custom_nodes
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"
        self.client_id = uuid.uuid4().hex
        self._ws = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare_dirs(self) -> None:
        for sub in ("models", "custom_nodes", "input", "output", "user", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        node = self.base_dir / "custom_nodes" / SIMULATED_DEVICES_NODE
        if self.simulated_devices and not node.exists():
            node.symlink_to(REPO / "devtools" / "simulated_devices_node.py")

    def start(self, timeout: float = 180) -> "ComfyServer":
        self.prepare_dirs()
        import torch

        cmd = [sys.executable, str(self.comfyui_dir / "main.py"), "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base_dir),
               "--disable-auto-launch"]
        if not torch.cuda.is_available():
            cmd.append("--cpu")
        # Absolute, as the server runs in the ComfyUI folder: its workers inherit both (PYTHONPATH: a
        # host's frontend overlay, see devtools/host.py).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMFYUI_DIR": str(self.comfyui_dir), **self.env}
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep))
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd + self.extra_args, cwd=self.comfyui_dir, env=env,
                                        stdout=self.log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/object_info", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer /object_info in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20) -> list[int]:
        """Stop the server and all its children; return the pids that were still alive after (none)."""
        if self.process is None:
            return []
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        tracked = [psutil.Process(self.process.pid)] if self.process.poll() is None else []
        tracked += self.descendants()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(tracked, timeout=timeout)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self.process.wait(timeout=5)
        self.log_file.close()
        self.process = None
        return [p.pid for p in tracked if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    # --- the API a script uses -------------------------------------------------
    def get(self, path: str) -> dict:
        response = requests.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post_prompt(self, prompt: dict) -> str:
        """Queue an API-format prompt; raises PromptRejected with ComfyUI's validation errors."""
        response = requests.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id},
                                 timeout=30)
        body = response.json()
        if response.status_code != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def interrupt(self) -> None:
        requests.post(f"{self.url}/interrupt", timeout=10)

    def free(self) -> None:
        """Unload models and drop ComfyUI's execution cache before the next prompt."""
        requests.post(f"{self.url}/free", json={"unload_models": True, "free_memory": True}, timeout=10)

    def websocket(self):
        """The client's websocket, opened before prompts are posted so no message is missed."""
        import websocket

        if self._ws is None:
            self._ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                                   timeout=30)
        return self._ws

    def wait(self, prompt_id: str, timeout: float = 600) -> PromptResult:
        """Follow the prompt on the websocket (progress) until /history says it completed."""
        start = time.monotonic()
        progress: list = []
        ended = False
        while time.monotonic() - start < timeout:
            ended = self.read_progress(prompt_id, progress) or ended
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                drain_until = time.monotonic() + 5  # history can complete before the last messages are read
                while not ended and time.monotonic() < drain_until:
                    ended = self.read_progress(prompt_id, progress)
                status = entry["status"].get("status_str", "error")
                if any(kind == "execution_interrupted" for kind, _ in entry["status"].get("messages", [])):
                    status = "interrupted"
                return PromptResult(prompt_id, status, entry, time.monotonic() - start, progress)
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def read_progress(self, prompt_id: str, progress: list, seconds: float = 0.3) -> bool:
        """Read websocket messages for up to `seconds`, keeping this prompt's progress events.

        Returns True once the prompt's end message (success, error, interrupt) was read.
        """
        import websocket

        ws = self.websocket()
        ws.settimeout(seconds)
        try:
            while True:
                raw = ws.recv()
                if not isinstance(raw, str):
                    continue
                message = json.loads(raw)
                data = message.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if message.get("type") == "progress":
                    progress.append((data.get("node"), data.get("value"), data.get("max")))
                if message.get("type") in END_MESSAGES and data.get("prompt_id") == prompt_id:
                    return True
        except (websocket.WebSocketTimeoutException, TimeoutError):
            return False

    def run(self, prompt: dict, timeout: float = 600) -> PromptResult:
        self.websocket()
        return self.wait(self.post_prompt(prompt), timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class PromptRejected(RuntimeError):
    def __init__(self, body: dict):
        self.body = body
        super().__init__(json.dumps(body, indent=1)[:4000])

    def node_error_text(self) -> str:
        parts = [self.body.get("error", {}).get("message", "")]
        for node in self.body.get("node_errors", {}).values():
            for err in node.get("errors", []):
                parts.append(f"{err.get('message')}: {err.get('details')}")
        return "\n".join(parts)
