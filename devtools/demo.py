"""`make demo`: every bundled API workflow through a real ComfyUI server.

Writes the small random-weight demo models into the host's model folders, copies
workflows/inputs/ into its input folder, starts ComfyUI, queues each workflows/api/*.json
with POST /prompt, follows it on the websocket and /history, and prints a table
(workflow, status, seconds, peak memory of the server and its workers). Outputs are copied
to out/demo/<workflow>/. Exits 0 only if every workflow succeeded.
"""
import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.comfy_server import ComfyServer, PromptRejected  # noqa: E402
from devtools.demo_models import ensure_models  # noqa: E402


class PeakRss:
    """Peak resident memory of a process tree, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_workflow(server: ComfyServer, path: Path, out_dir: Path) -> dict:
    prompt = json.loads(path.read_text())
    row = {"workflow": path.stem, "status": "rejected", "seconds": 0.0, "peak_gb": 0.0, "error": ""}
    with PeakRss(server.process.pid) as peak:
        try:
            result = server.run(prompt, timeout=900)
        except PromptRejected as rejected:
            row["error"] = rejected.node_error_text()
            return row
    row.update(status=result.status, seconds=result.seconds, peak_gb=peak.peak / 2**30, error=result.error_text,
               progress=len(result.progress))
    target = out_dir / path.stem
    for file in result.output_files(server.base_dir):
        target.mkdir(parents=True, exist_ok=True)
        if file.exists():
            shutil.copy2(file, target / file.name)
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'workflow':<36} {'status':<12} {'seconds':>8} {'peak GB':>8} {'progress':>9}")
    for row in rows:
        print(f"{row['workflow']:<36} {row['status']:<12} {row['seconds']:>8.1f} {row['peak_gb']:>8.2f}"
              f" {row.get('progress', 0):>9}")
        if row["error"]:
            print(f"    error: {row['error'][:400]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui-dir", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="workflow names (default: all)")
    args = parser.parse_args()
    host = args.comfyui_dir.resolve()
    ensure_models(host / "models")
    (host / "input").mkdir(exist_ok=True)
    for item in (REPO / "workflows" / "inputs").iterdir():
        shutil.copy2(item, host / "input" / item.name)
    workflows = sorted((REPO / "workflows" / "api").glob("*.json"))
    if args.only:
        workflows = [w for w in workflows if w.stem in args.only]
    out_dir = REPO / "out" / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ComfyServer(host, comfyui_dir=host) as server:
        print(f"ComfyUI at {server.url}, log {server.log_path}")
        rows = [run_workflow(server, path, out_dir) for path in workflows]
    print_table(rows)
    ok = all(row["status"] == "success" for row in rows) and rows
    print(f"\n{len(rows)} workflows, {sum(r['status'] == 'success' for r in rows)} succeeded, "
          f"{time.monotonic() - started:.0f}s; outputs in {out_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
