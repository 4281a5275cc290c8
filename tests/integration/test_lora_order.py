"""What the node tooltips promise about LoRA: ComfyUI's own LoraLoaderModelOnly, with a real LoRA file,
before or after Multi-GPU Apply (every mode) and Offload Apply, equals the plain LoRA graph.
"""
import pytest
import torch

from multi_gpu_helpers import load_tiny_wan, runner_closed, sample  # configures ComfyUI for the CPU first

import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance  # noqa: E402
from comfyui_parallel.nodes.multi_gpu import MultiGPUApply  # noqa: E402
from comfyui_parallel.nodes.offload import OffloadApply  # noqa: E402
from devtools.demo_models import TINY_WAN_LORA  # noqa: E402

MODES = {"none": 0.0, "data_parallel": 1e-4, "block_distribution": 0.0, "distributed": 1e-4}
STRENGTH = 0.8


@pytest.fixture(scope="module")
def expected(models_cache):
    folder_paths.add_model_folder_path("loras", str(models_cache / "loras"))
    folder_paths.filename_list_cache.clear()
    plain = load_tiny_wan(models_cache)
    with_lora = lora(plain)
    result = sample(with_lora)
    assert (result - sample(plain)).abs().max() > 1e-2, "the LoRA changes the result"
    return result


def lora(model):
    node = guidance.comfy_node_module("nodes").LoraLoaderModelOnly()
    return node.load_lora_model_only(model, TINY_WAN_LORA, STRENGTH)[0]


def multi_gpu(model, mode):
    return MultiGPUApply().apply(model, "main_device", mode, "cpu" if mode == "none" else "cpu,cpu", False, 0.0)[0]


def offload(model):
    return OffloadApply().apply(model, blocks_to_swap=1, vram_budget_gb=0.0, prefetch_blocks=1, pin_memory=True,
                                offload_device="cpu", gradient_checkpointing=False)[0]


@pytest.mark.parametrize("order", ["lora_before", "lora_after"])
@pytest.mark.parametrize("mode", list(MODES))
def test_multi_gpu_apply_with_a_lora_before_or_after(models_cache, expected, mode, order):
    plain = load_tiny_wan(models_cache)
    model = multi_gpu(lora(plain), mode) if order == "lora_before" else lora(multi_gpu(plain, mode))
    with runner_closed(model):
        torch.testing.assert_close(sample(model), expected, rtol=MODES[mode], atol=MODES[mode])


@pytest.mark.parametrize("order", ["lora_before", "lora_after"])
def test_offload_apply_with_a_lora_before_or_after(models_cache, expected, order):
    plain = load_tiny_wan(models_cache)
    model = offload(lora(plain)) if order == "lora_before" else lora(offload(plain))
    torch.testing.assert_close(sample(model), expected, rtol=0, atol=0)
