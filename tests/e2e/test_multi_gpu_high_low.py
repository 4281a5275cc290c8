"""Wan 2.2 14B's high-noise / low-noise pair as two MultiGPULoaders in one graph, through a real ComfyUI server.

The bundled wan22_high_low_multi_gpu workflow: the high-noise expert samples steps 0..2
(KSamplerAdvanced, add_noise, return_with_leftover_noise), the low-noise expert steps 2..4.
In block_distribution and distributed modes its latent equals the same graph with two
UNETLoaders (the two tiny experts are two seeds of the T2V model, shaped as the real pair).
"""
import json

import pytest
import torch

from devtools.comfy_server import REPO
from test_multi_gpu import read_latent

API = REPO / "workflows" / "api"
LOADERS = ("1", "2")  # high-noise, low-noise
# mode -> tolerance: block_distribution runs the same math; distributed attends over token shards
MODES = {"block_distribution": 0.0, "distributed": 1e-4}


def pair_workflow(mode: str | None) -> dict:
    """The bundled pair with both loaders in `mode`, or with UNETLoaders (mode None)."""
    prompt = json.loads((API / "wan22_high_low_multi_gpu.json").read_text())
    for node_id in LOADERS:
        inputs = prompt[node_id]["inputs"]
        if mode is None:
            prompt[node_id] = {"class_type": "UNETLoader",
                               "inputs": {"unet_name": inputs["unet_name"], "weight_dtype": "default"}}
        else:
            inputs["parallelism_type"] = mode
    return prompt


@pytest.fixture(scope="module")
def plain_latent(comfy_server):
    return read_latent(comfy_server.run(pair_workflow(None)), comfy_server)


def test_bundled_pair_is_two_multi_gpu_loaders_on_two_experts():
    prompt = json.loads((API / "wan22_high_low_multi_gpu.json").read_text())
    loaders = [prompt[node_id] for node_id in LOADERS]
    assert [n["class_type"] for n in loaders] == ["MultiGPULoader"] * 2
    assert len({n["inputs"]["unet_name"] for n in loaders}) == 2
    high, low = prompt["6"]["inputs"], prompt["7"]["inputs"]
    assert (high["model"], high["end_at_step"], high["return_with_leftover_noise"]) == (["1", 0], 2, "enable")
    assert (low["model"], low["start_at_step"], low["add_noise"]) == (["2", 0], 2, "disable")


@pytest.mark.parametrize("mode", list(MODES))
def test_pair_gives_the_unet_loader_graphs_latent(server, plain_latent, mode):
    result = server.run(pair_workflow(mode))
    torch.testing.assert_close(read_latent(result, server), plain_latent, rtol=MODES[mode], atol=MODES[mode])
    assert {"6", "7"} <= {node for node, _, _ in result.progress}, "both samplers' progress reached the websocket"


def test_the_low_noise_expert_matters(server, plain_latent):
    """The same graph with the high-noise expert in both places differs, so the pair test sees both files."""
    prompt = pair_workflow(None)
    prompt["2"]["inputs"]["unet_name"] = prompt["1"]["inputs"]["unet_name"]
    assert (read_latent(server.run(prompt), server) - plain_latent).abs().max() > 1e-3
