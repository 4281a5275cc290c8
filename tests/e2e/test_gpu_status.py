"""GPU Status through the real ComfyUI server: a report, clear errors for bad gpu_ids (and the
server answers the next prompt), a recommendation for the tiny Wan, and GET /parallel/gpus."""
import json

import pytest
import requests

from devtools.comfy_server import REPO
from devtools.demo_models import TINY_WAN


def status_prompt(gpu_ids: str, model: str = "None") -> dict:
    return {"1": {"class_type": "GPUStatus", "inputs": {"gpu_ids": gpu_ids, "model": model}}}


def report_of(result) -> str:
    (output,) = result.history["outputs"].values()
    return output["text"][0]


def test_report_for_cpu(server):
    result = server.run(status_prompt("cpu"))
    assert result.status == "success", result.error_text
    report = report_of(result)
    assert "CPU (host RAM)" in report and "OK: gpu_ids 'cpu' -> cpu" in report


def test_recommendation_for_tiny_wan(server):
    result = server.run(status_prompt("cpu,cpu", TINY_WAN))
    assert result.status == "success", result.error_text
    report = report_of(result)
    assert f"Model {TINY_WAN}:" in report and "2 blocks" in report
    assert "Recommended: data_parallel on cpu:0, cpu:1" in report


def test_bundled_workflow(server):
    result = server.run(json.loads((REPO / "workflows" / "api" / "gpu_status.json").read_text()))
    assert result.status == "success", result.error_text
    assert "Recommended: " in report_of(result)


@pytest.mark.parametrize("gpu_ids, problem", [("0,7", "does not exist"), ("abc", "'abc' is not a device id")])
def test_bad_gpu_ids_is_a_clear_error_and_the_server_goes_on(server, gpu_ids, problem):
    result = server.run(status_prompt(gpu_ids))
    assert result.status == "error"
    assert "gpu_ids: " in result.error_text and problem in result.error_text
    assert "'cpu,cpu'" in result.error_text  # says what is allowed
    after = server.run(status_prompt("cpu"))
    assert after.status == "success", after.error_text


def test_gpus_route_serves_json(server):
    status = server.get("/parallel/gpus?gpu_ids=cpu,cpu")
    assert status["valid"] and status["selected"] == ["cpu:0", "cpu:1"]
    assert status["devices"][-1]["name"] == "CPU (host RAM)" and status["devices"][-1]["total_bytes"] > 0
    assert "Devices" in status["report"]
    invalid = server.get("/parallel/gpus?gpu_ids=abc")
    assert not invalid["valid"] and invalid["message"].startswith("gpu_ids: ")
    with_model = server.get(f"/parallel/gpus?gpu_ids=cpu&model={TINY_WAN}")
    assert with_model["recommendation"]["parallelism_type"] == "none"
    missing = requests.get(f"{server.url}/parallel/gpus?model=nope.safetensors", timeout=30)
    assert missing.status_code == 400 and missing.json()["error"].startswith("model: ")
