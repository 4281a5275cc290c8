"""Step-Pipeline Sampler through a real ComfyUI server: the bundled Wan 2.2 pair workflow against the
plain graph of ComfyUI's Wan 2.2 templates, and bad input.

The bundled wan22_step_pipeline workflow loads the two tiny experts with UNETLoader and samples two
videos over two stage workers (cpu,cpu), the high-noise expert's steps 0..2 on stage 0 and the
low-noise expert's 2..4 on stage 1. In the same prompt, for each seed, two KSamplerAdvanced nodes
(steps 0..2 with leftover noise, then 2..4 with add_noise disabled) make the plain graph's latent.
"""
import json

import torch
from safetensors.torch import load_file

from devtools.comfy_server import REPO

WORKFLOW = REPO / "workflows" / "api" / "wan22_step_pipeline.json"
SAMPLER = "6"


def with_plain_pairs(api: dict) -> dict:
    """The bundled prompt plus, per video, the two-KSamplerAdvanced graph for its seed."""
    inputs = api[SAMPLER]["inputs"]
    shared = {k: inputs[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "positive", "negative")}
    for n in range(inputs["num_videos"]):
        seed, first, second = inputs["noise_seed"] + n, f"{20 + 3 * n}", f"{21 + 3 * n}"
        api[first] = {"class_type": "KSamplerAdvanced", "inputs": {
            **shared, "model": inputs["model"], "add_noise": "enable", "noise_seed": seed,
            "latent_image": inputs["latent_image"], "start_at_step": 0, "end_at_step": inputs["boundary_step"],
            "return_with_leftover_noise": "enable"}}
        api[second] = {"class_type": "KSamplerAdvanced", "inputs": {
            **shared, "model": inputs["model_2"], "add_noise": "disable", "noise_seed": seed,
            "latent_image": [first, 0], "start_at_step": inputs["boundary_step"], "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}}
        api[f"{22 + 3 * n}"] = {"class_type": "SaveLatent",
                                "inputs": {"samples": [second, 0], "filename_prefix": f"plain_pair/{n}"}}
    return api


def saved_latent(result, server, node_id: str) -> torch.Tensor:
    """The latent SaveLatent node `node_id` wrote."""
    (item,) = result.history["outputs"][node_id]["latents"]
    return load_file(server.base_dir / "output" / item["subfolder"] / item["filename"])["latent_tensor"]


def test_bundled_workflow_equals_the_ksampler_advanced_pair_per_seed(one_thread_server):
    server = one_thread_server
    result = server.run(with_plain_pairs(json.loads(WORKFLOW.read_text())), timeout=900)
    assert result.status == "success", result.error_text + server.log_tail()
    videos = saved_latent(result, server, "7")
    assert videos.shape[0] == 2
    for n in range(2):
        assert torch.equal(videos[n:n + 1], saved_latent(result, server, f"{22 + 3 * n}")), f"video {n}"
    report = json.dumps(result.history["outputs"]["8"])
    assert "stage 0: steps [0, 2), holds model (" in report and "stage 1: steps [2, 4), holds model_2 (" in report
    assert any(node == SAMPLER and total == 8 for node, _, total in result.progress)  # 2 videos x 4 steps


def test_bad_boundary_step_is_a_clear_error_and_the_server_stays_up(server):
    api = json.loads(WORKFLOW.read_text())
    api[SAMPLER]["inputs"]["boundary_step"] = 7
    result = server.run(api, timeout=600)
    assert result.status == "error"
    assert "boundary_step: is 7" in result.error_text
    assert server.process.poll() is None
    api[SAMPLER]["inputs"]["boundary_step"] = 2
    assert server.run(api, timeout=600).status == "success"


def test_real_a14b_workflow_names_its_files_and_memory_in_a_note():
    ui = json.loads((REPO / "workflows" / "real" / "wan22_a14b_step_pipeline.json").read_text())
    (note,) = [node["widgets_values"][0] for node in ui["nodes"] if node["type"] == "Note"]
    api = json.loads((REPO / "workflows" / "real" / "api" / "wan22_a14b_step_pipeline.json").read_text())
    files = [node["inputs"][key] for node in api.values() for key in ("unet_name", "clip_name", "vae_name")
             if key in node["inputs"]]
    assert len(files) == 4 and all(name in note for name in files)
    assert "26.6 GiB" in note and "GPU 0 holds only the high-noise expert" in note
