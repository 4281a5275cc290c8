"""SeedVR through the real server: the bundled workflow, determinism, clear input errors, Comfy-Org's
file on its baked-in embeddings, and the frame chunks over two gloo workers (equal, cancellable)."""
import json
import shutil
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from devtools.comfy_server import REPO

WORKFLOW = json.loads((REPO / "workflows" / "api" / "seedvr_upscale.json").read_text())
INPUTS = ["seedvr_demo_frame.png", "seedvr_tiny_pos_emb.safetensors", "seedvr_tiny_neg_emb.safetensors"]


@pytest.fixture
def seedvr_inputs(input_dir):
    for name in INPUTS:
        if not (input_dir / name).exists():
            shutil.copy(REPO / "workflows" / "inputs" / name, input_dir / name)
    return input_dir


def _prompt(**upscaler):
    prompt = json.loads(json.dumps(WORKFLOW))
    prompt["6"]["inputs"].update(upscaler)
    return prompt


def _frames(result, server) -> list:
    files = sorted(f for f in result.output_files(server.base_dir) if f.suffix == ".png")
    return [np.asarray(Image.open(f)) for f in files]


def test_bundled_workflow_upscales_every_frame_deterministically(server, seedvr_inputs):
    first = server.run(WORKFLOW)
    assert first.status == "success", first.error_text
    frames = _frames(first, server)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    server.free()
    again = _frames(server.run(WORKFLOW), server)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_cfg_with_negative_and_chunk_overlap_run(server, seedvr_inputs):
    result = server.run(_prompt(cfg_scale=2.0, sample_steps=2, batch_size=1, temporal_overlap=0, seed=1))
    assert result.status == "success", result.error_text
    assert len(_frames(result, server)) == 5


@pytest.mark.parametrize("change,message", [
    ({"batch_size": 3}, "batch_size"),
    ({"temporal_overlap": 5}, "temporal_overlap"),
])
def test_bad_upscaler_inputs_are_clear_errors(server, seedvr_inputs, change, message):
    result = server.run(_prompt(**change))
    assert result.status == "error"
    assert message in result.error_text


def test_embedding_of_wrong_width_is_a_clear_error(server, seedvr_inputs):
    prompt = _prompt()
    shutil.copy(REPO / "workflows" / "inputs" / "wan_cond.safetensors", seedvr_inputs / "test_wan_cond.safetensors")
    prompt["2"]["inputs"]["file"] = "test_wan_cond.safetensors"
    result = server.run(prompt)
    assert result.status == "error"
    assert "positive" in result.error_text and "[tokens, 32]" in result.error_text
    assert server.run(WORKFLOW).status == "success"  # the server stays up and works


def _comfy_org_prompt(**upscaler):
    """Comfy-Org's layout (fp16, embeddings baked in): no Load Conditioning nodes at all."""
    prompt = _prompt(**{"cfg_scale": 2.0, "sample_steps": 2, "batch_size": 1, **upscaler})
    prompt["1"]["inputs"]["dit_name"] = "tiny_seedvr2_3b_fp16.safetensors"
    for node in ("2", "3"):
        del prompt[node]
    for name in ("positive", "negative"):
        del prompt["6"]["inputs"][name]
    return prompt


def test_comfy_org_file_runs_on_its_baked_embeddings(server, seedvr_inputs):
    """Without Load Conditioning nodes the baked-in embeddings are used; the official layout without
    embeddings given is a clear error naming the input, and the server stays up."""
    baked = server.run(_comfy_org_prompt())
    assert baked.status == "success", baked.error_text
    assert len(_frames(baked, server)) == 5
    prompt = _comfy_org_prompt()
    prompt["1"]["inputs"]["dit_name"] = WORKFLOW["1"]["inputs"]["dit_name"]
    missing = server.run(prompt)
    assert missing.status == "error"
    assert "positive: no text embedding was given and the checkpoint carries none" in missing.error_text
    assert server.run(_comfy_org_prompt(seed=5)).status == "success"


def _workers(server) -> list:
    return [p for p in server.descendants() if "worker_main.py" in " ".join(p.cmdline())]


def test_two_workers_give_the_single_device_frames(one_thread_server):
    """One device vs the frame chunks over two gloo workers (one thread each, as this server): equal;
    a bad gpu_ids is an error naming it, and the server stays up."""
    server = one_thread_server
    single = server.run(_comfy_org_prompt())
    assert single.status == "success", single.error_text
    multi = server.run(_comfy_org_prompt(gpu_ids="cpu,cpu"))
    assert multi.status == "success", multi.error_text
    a, b = _frames(single, server), _frames(multi, server)
    assert len(a) == len(b) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert multi.progress and multi.progress[-1][1:] == (100, 100)
    bad = server.run(_comfy_org_prompt(gpu_ids="cpu,gpu7"))
    assert bad.status == "error" and "gpu_ids" in bad.error_text
    assert server.run(_comfy_org_prompt(seed=5)).status == "success"


def _interrupt_after_progress(server, prompt: dict):
    """Queue `prompt`, press Cancel at its first progress above 0, return (that value, the result)."""
    ws = server.websocket()
    ws.settimeout(300)
    prompt_id = server.post_prompt(prompt)
    while True:
        message = json.loads(raw) if isinstance(raw := ws.recv(), str) else {}
        data = message.get("data", {})
        assert message.get("type") != "execution_success" or data.get("prompt_id") != prompt_id, "ran to the end"
        if message.get("type") == "progress" and data.get("prompt_id") == prompt_id and data["value"] > 0:
            server.interrupt()
            return data["value"], server.wait(prompt_id, timeout=300)


def test_cancel_stops_both_workers_and_the_next_prompt_runs(one_thread_server):
    server = one_thread_server
    seen, result = _interrupt_after_progress(server, _comfy_org_prompt(gpu_ids="cpu,cpu", sample_steps=400))
    assert result.status == "interrupted", result.error_text
    assert all(value < 100 for _node, value, _max in result.progress), "the workers ran on after Cancel"
    workers = [p.pid for p in _workers(server)]
    assert len(workers) == 2  # kept for the next prompt, idle
    again = server.run(_comfy_org_prompt(gpu_ids="cpu,cpu"))
    assert again.status == "success", again.error_text
    assert sorted(p.pid for p in _workers(server)) == sorted(workers)
    server.free()
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in workers if psutil.pid_exists(pid)], timeout=20)
    assert not alive
