"""distributed mode through a real ComfyUI server: 2 and 3 gloo workers give the plain graph's latent;
the Cancel button stops the workers' work, the next prompt runs, and no worker is left behind."""
import json

import pytest
import torch

from comfyui_parallel.models.comfy.flags import ENV
from test_multi_gpu import read_latent, workflow

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # attention on token shards rounds differently in the last bits


def distributed(gpu_ids: str, steps: int | None = None) -> dict:
    prompt = workflow("wan_multi_gpu_distributed")
    prompt["1"]["inputs"]["gpu_ids"] = gpu_ids
    if steps is not None:
        prompt["5"]["inputs"]["steps"] = steps
    return prompt


def worker_processes(server) -> list:
    return [p for p in server.descendants() if "worker_main.py" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def plain_latent(comfy_server):
    return read_latent(comfy_server.run(workflow("wan_basic")), comfy_server)


@pytest.mark.parametrize("gpu_ids", ["cpu,cpu", "cpu,cpu,cpu"])
def test_distributed_gives_the_plain_graphs_latent(server, plain_latent, gpu_ids):
    result = server.run(distributed(gpu_ids))
    torch.testing.assert_close(read_latent(result, server), plain_latent, **TOLERANCE)
    assert result.progress and result.progress[-1][2] == 4, "KSampler progress did not reach the websocket"
    assert len(worker_processes(server)) == len(gpu_ids.split(",")), "one live worker group, of this size"


def run_until_progress_then_interrupt(server, prompt: dict, after_steps: int = 2):
    """Queue `prompt`, press Cancel once KSampler reported `after_steps` steps, return the result."""
    ws = server.websocket()
    ws.settimeout(300)
    prompt_id = server.post_prompt(prompt)
    while True:
        raw = ws.recv()
        message = json.loads(raw) if isinstance(raw, str) else {}
        data = message.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue  # a message of an earlier prompt
        assert message.get("type") not in ("execution_error", "execution_success"), message
        if message.get("type") == "progress" and data.get("value", 0) >= after_steps:
            break
    server.interrupt()
    return server.wait(prompt_id, timeout=300)


def test_cancel_stops_the_workers_and_the_next_prompt_runs(server, plain_latent):
    result = run_until_progress_then_interrupt(server, distributed("cpu,cpu", steps=400))
    assert result.status == "interrupted", result.error_text
    pids = {process.pid for process in worker_processes(server)}
    assert len(pids) == 2, "the cancel kept the two workers, and no others"
    again = server.run(distributed("cpu,cpu"))
    torch.testing.assert_close(read_latent(again, server), plain_latent, **TOLERANCE)
    assert {process.pid for process in worker_processes(server)} == pids, "the next prompt ran on the same workers"


def test_workers_of_a_server_started_with_flags_get_them(flagged_server):
    """--use-split-cross-attention --reserve-vram 1.5 --fast fp16_accumulation --deterministic reach the
    workers' environment (a worker sets them on ComfyUI's args: tests/integration/test_multi_gpu_distributed.py)."""
    plain = read_latent(flagged_server.run(workflow("wan_basic")), flagged_server)
    result = flagged_server.run(distributed("cpu,cpu"))
    torch.testing.assert_close(read_latent(result, flagged_server), plain, **TOLERANCE)
    sent = [json.loads(process.environ()[ENV]) for process in worker_processes(flagged_server)]
    assert len(sent) == 2 and sent[0] == sent[1]
    assert sent[0]["use_split_cross_attention"] and sent[0]["deterministic"] and not sent[0]["use_pytorch_cross_attention"]
    assert sent[0]["reserve_vram"] == 1.5 and sent[0]["fast"] == ["fp16_accumulation"] and sent[0]["cpu"]
