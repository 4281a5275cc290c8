"""The workers the pack keeps between prompts, through a real ComfyUI server: kept for the next prompt,
ended by ComfyUI's "free memory" (POST /free, the Manager's / API's unload button), started afresh after."""
import json
import shutil
import time

import psutil

from devtools.comfy_server import REPO

API = REPO / "workflows" / "api"


def svd_prompt(input_dir) -> dict:
    for name in ("svd_image_embed.safetensors", "svd_image_embed_zero.safetensors"):
        shutil.copy(REPO / "workflows" / "inputs" / name, input_dir / name)
    return json.loads((API / "svd_step_pipeline.json").read_text())


def worker_pids(server) -> set[int]:
    """Live worker processes of the server (an exited one, a zombie until reaped, is not live)."""
    pids = set()
    for process in server.descendants():
        try:
            if "worker_main.py" in " ".join(process.cmdline()):
                pids.add(process.pid)
        except psutil.Error:
            continue
    return pids


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_post_free_ends_the_kept_workers_and_the_next_prompt_starts_new_ones(server, input_dir):
    first = server.run(svd_prompt(input_dir), timeout=900)
    assert first.status == "success", first.error_text
    kept = worker_pids(server)
    assert len(kept) >= 2, "the stage workers are kept for the next prompt"
    server.free()
    assert wait_for(lambda: not worker_pids(server) & kept), f"workers outlived POST /free: {worker_pids(server)}"
    # Another seed: ComfyUI applies /free's cache reset only when its prompt thread next wakes, so the same
    # prompt queued right after could still be answered from the cache, with no sampler run at all.
    prompt = svd_prompt(input_dir)
    prompt["5"]["inputs"]["seed"] += 1
    again = server.run(prompt, timeout=900)
    assert again.status == "success", again.error_text
    assert worker_pids(server) and not worker_pids(server) & kept
