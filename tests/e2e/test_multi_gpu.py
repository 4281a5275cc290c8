"""MultiGPULoader / MultiGPUApply through a real ComfyUI server: each mode's latent equals the plain graph's.

The plain graph is the bundled wan_basic workflow (UNETLoader, LoadConditioningFile x2,
EmptyHunyuanLatentVideo, KSampler with a fixed seed, SaveLatent); each mode swaps the
UNETLoader for the bundled wan_multi_gpu_<mode> workflow's MultiGPULoader over "cpu,cpu".
"""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from devtools.comfy_server import REPO, PromptRejected

API = REPO / "workflows" / "api"
# mode -> (rtol, atol): exact where the math is the same; data_parallel runs cond and uncond
# as two batch-1 calls, whose matmuls may round differently in the last bits
MODES = {"none": 0.0, "block_distribution": 0.0, "data_parallel": 1e-4, "auto": 1e-4}


def workflow(name: str) -> dict:
    return json.loads((API / f"{name}.json").read_text())


def read_latent(result, server) -> torch.Tensor:
    assert result.status == "success", result.error_text
    files = [f for f in result.output_files(server.base_dir) if f.suffix == ".latent"]
    assert len(files) == 1, result.history.get("outputs")
    return load_file(str(files[0]))["latent_tensor"]


@pytest.fixture(scope="module")
def plain_latent(comfy_server):
    return read_latent(comfy_server.run(workflow("wan_basic")), comfy_server)


def with_loader(**inputs) -> dict:
    prompt = workflow("wan_multi_gpu_none")
    prompt["1"]["inputs"].update(inputs)
    return prompt


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_gives_the_plain_graphs_latent(server, plain_latent, mode):
    prompt = workflow(f"wan_multi_gpu_{mode}")
    assert prompt["1"]["class_type"] == "MultiGPULoader" and prompt["1"]["inputs"]["parallelism_type"] == mode
    result = server.run(prompt)
    tolerance = MODES[mode]
    torch.testing.assert_close(read_latent(result, server), plain_latent, rtol=tolerance, atol=tolerance)
    assert result.progress and result.progress[-1][2] == 4, "KSampler progress did not reach the websocket"


def test_multi_gpu_apply_on_unet_loader_output(server, plain_latent):
    prompt = workflow("wan_basic")
    prompt["10"] = {"class_type": "MultiGPUApply", "inputs": {
        "model": ["1", 0], "load_device": "main_device", "parallelism_type": "block_distribution",
        "gpu_ids": "cpu,cpu,cpu", "enable_block_distribution": False, "memory_reserve_gb": 0.0}}
    prompt["5"]["inputs"]["model"] = ["10", 0]
    torch.testing.assert_close(read_latent(server.run(prompt), server), plain_latent, rtol=0, atol=0)


BAD_LOADER_INPUTS = [
    ({"gpu_ids": "7"}, "gpu_ids: GPU 7 does not exist"),
    ({"gpu_ids": "cpu,banana"}, "gpu_ids: 'banana' is not a device id"),
    ({"parallelism_type": "data_parallel", "gpu_ids": "cpu"},
     "gpu_ids: parallelism_type 'data_parallel' needs at least two devices"),
    ({"parallelism_type": "distributed", "gpu_ids": "cpu"},
     "gpu_ids: parallelism_type 'distributed' needs at least two devices"),
]


@pytest.mark.parametrize("inputs, expected", BAD_LOADER_INPUTS)
def test_bad_loader_input_is_a_clear_error_and_the_server_goes_on(server, plain_latent, inputs, expected):
    result = server.run(with_loader(**inputs))
    assert result.status == "error" and expected in result.error_text, result.error_text
    torch.testing.assert_close(read_latent(server.run(workflow("wan_multi_gpu_none")), server), plain_latent,
                               rtol=0, atol=0)


def test_unknown_model_file_is_refused_naming_unet_name(server):
    with pytest.raises(PromptRejected) as rejected:
        server.post_prompt(with_loader(unet_name="no_such_model.safetensors"))
    assert "unet_name" in json.dumps(rejected.value.body)


def test_non_wan_model_to_block_distribution_names_what_is_supported(server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "MultiGPUApply", "inputs": {
            "model": ["1", 0], "load_device": "main_device", "parallelism_type": "block_distribution",
            "gpu_ids": "cpu,cpu", "enable_block_distribution": False, "memory_reserve_gb": 0.0}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 1,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "test_not_wan"}},
    }
    result = server.run(copy.deepcopy(prompt))
    assert result.status == "error"
    assert "model: parallelism_type 'block_distribution' needs a Wan model, got UNetModel" in result.error_text
    assert "Wan 2.1" in result.error_text
