"""The files people download, through a real ComfyUI server (nodes executed under its inference mode):
an fp8_scaled Wan in MultiGPULoader's modes, and a LoRA (LoraLoaderModelOnly, a real LoRA file) whose
strength changes between prompts on one kept Multi-GPU MODEL. Each equals the plain graph.
"""
import pytest
import torch

from devtools.demo_models import TINY_WAN_FP8_SCALED, TINY_WAN_LORA
from test_multi_gpu import read_latent, workflow

SEED = 4242  # a seed of its own: no prompt here comes from ComfyUI's cache of another test's
TOLERANCE = {"data_parallel": 1e-4, "distributed": 1e-4, "block_distribution": 0.0}


def plain(unet_name: str = "tiny_wan_t2v.safetensors", lora: float | None = None) -> dict:
    """wan_basic (UNETLoader -> KSampler), optionally through LoraLoaderModelOnly."""
    prompt = workflow("wan_basic")
    prompt["1"]["inputs"]["unet_name"] = unet_name
    prompt["5"]["inputs"]["seed"] = SEED
    return with_lora(prompt, lora)


def multi_gpu(mode: str, unet_name: str = "tiny_wan_t2v.safetensors", lora: float | None = None) -> dict:
    prompt = plain(unet_name)
    prompt["1"] = {"class_type": "MultiGPULoader", "inputs": {
        "unet_name": unet_name, "base_precision": "default", "load_device": "main_device",
        "parallelism_type": mode, "gpu_ids": "cpu,cpu", "enable_block_distribution": False,
        "memory_reserve_gb": 0.0}}
    return with_lora(prompt, lora)


def with_lora(prompt: dict, strength: float | None) -> dict:
    if strength is not None:
        prompt["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": TINY_WAN_LORA, "strength_model": strength}}
        prompt["5"]["inputs"]["model"] = ["20", 0]
    return prompt


@pytest.mark.parametrize("mode", list(TOLERANCE))
def test_fp8_scaled_file_equals_the_unet_loader_graph(server, mode):
    expected = read_latent(server.run(plain(TINY_WAN_FP8_SCALED)), server)
    got = read_latent(server.run(multi_gpu(mode, TINY_WAN_FP8_SCALED)), server)
    torch.testing.assert_close(got, expected, rtol=TOLERANCE[mode], atol=TOLERANCE[mode])


@pytest.mark.parametrize("mode", ["data_parallel", "distributed"])
def test_lora_strength_changes_between_prompts_reach_replicas_and_workers(server, mode):
    for strength in (1.0, 0.5, None):
        expected = read_latent(server.run(plain(lora=strength)), server)
        got = read_latent(server.run(multi_gpu(mode, lora=strength)), server)
        torch.testing.assert_close(got, expected, rtol=TOLERANCE[mode], atol=TOLERANCE[mode],
                                   msg=f"{mode}, LoRA strength {strength}")
