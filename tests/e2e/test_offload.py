"""Offload Loader / Offload Apply through the real server: the same latent as the plain graph, clear errors."""
import json

import pytest
from safetensors.torch import load_file

from devtools.comfy_server import REPO

OFFLOAD_WAN = json.loads((REPO / "workflows" / "api" / "offload_wan.json").read_text())
PLAIN_LOADER = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan_t2v.safetensors", "weight_dtype": "default"}}


def graph(loader: dict, prefix: str) -> dict:
    prompt = json.loads(json.dumps(OFFLOAD_WAN))
    prompt["1"] = loader
    prompt["6"]["inputs"]["filename_prefix"] = f"test_offload/{prefix}"
    return prompt


def latent_of(server, prompt: dict):
    result = server.run(prompt)
    assert result.status == "success", result.error_text
    (file,) = [f for f in result.output_files(server.base_dir) if f.suffix == ".latent"]
    return load_file(str(file))["latent_tensor"]


def offload_inputs(**overrides) -> dict:
    inputs = {k: v for k, v in OFFLOAD_WAN["1"]["inputs"].items() if k not in ("unet_name", "base_precision")}
    return {**inputs, **overrides}


def test_offload_loader_and_apply_give_the_plain_latent(server):
    import torch

    plain = latent_of(server, graph(PLAIN_LOADER, "plain"))
    for swap, prefetch in [(1, 1), (2, 0), (2, 2)]:
        loader = json.loads(json.dumps(OFFLOAD_WAN["1"]))
        loader["inputs"].update(blocks_to_swap=swap, prefetch_blocks=prefetch)
        assert torch.equal(latent_of(server, graph(loader, f"loader_{swap}_{prefetch}")), plain)
    prompt = graph(PLAIN_LOADER, "apply")
    prompt["7"] = {"class_type": "OffloadApply", "inputs": {"model": ["1", 0], **offload_inputs(blocks_to_swap=2)}}
    prompt["5"]["inputs"]["model"] = ["7", 0]
    assert torch.equal(latent_of(server, prompt), plain)


@pytest.mark.parametrize("overrides,expected", [
    ({"blocks_to_swap": 5}, "blocks_to_swap: 5 but the model has 2 blocks (allowed: 0..2)"),
    ({"blocks_to_swap": 0, "vram_budget_gb": 0.001}, "vram_budget_gb: 0.00 GB cannot hold the model"),
])
def test_bad_input_is_a_clear_error_and_server_stays_up(server, overrides, expected):
    loader = json.loads(json.dumps(OFFLOAD_WAN["1"]))
    loader["inputs"].update(overrides)
    result = server.run(graph(loader, "bad"))
    assert result.status == "error" and expected in result.error_text, result.error_text
    assert server.get("/queue") is not None
