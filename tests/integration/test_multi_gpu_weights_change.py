"""Weights that change under data_parallel and distributed: a real LoRA file through ComfyUI's own
LoraLoaderModelOnly at strength 1.0, then 0.5, then removed, on one Multi-GPU MODEL.

Each run must equal the plain graph at that strength. ComfyUI re-patches a weight into a fresh
tensor of the same size, which the CUDA caching allocator hands the block the previous one had;
a patcher with weight_inplace_update writes it into the very same tensor. Either way the address
stays and, under the inference mode ComfyUI executes in, no version counter moves: replicas and
workers must see the change from the patches ComfyUI loaded. The CPU's allocator rarely reuses
the address, so the in-place patcher is what shows it here.
"""
import pytest
import torch

from multi_gpu_helpers import load_tiny_wan, runner_closed, sample  # configures ComfyUI for the CPU first

import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance  # noqa: E402
from comfyui_parallel.models.comfy.patcher import weights_identity  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from devtools.demo_models import TINY_WAN_LORA  # noqa: E402

STRENGTHS = (1.0, 0.5, None)  # None: the LoRA node removed from the graph
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # batch-1 calls and token shards round differently in the last bits


@pytest.fixture(scope="module")
def loras(models_cache):
    folder_paths.add_model_folder_path("loras", str(models_cache / "loras"))
    folder_paths.filename_list_cache.clear()


def with_lora(model, strength):
    if strength is None:
        return model
    node = guidance.comfy_node_module("nodes").LoraLoaderModelOnly()
    return node.load_lora_model_only(model, TINY_WAN_LORA, strength)[0]


def load(models_cache, inplace: bool = False):
    """UNETLoader's MODEL; inplace: its patcher writes patched weights into the loaded tensors."""
    model = load_tiny_wan(models_cache)
    model.weight_inplace_update = inplace
    return model


@pytest.fixture(scope="module")
def expected(models_cache, loras):
    """The plain graph (UNETLoader -> LoraLoaderModelOnly -> KSampler) at each strength."""
    plain = load(models_cache)
    with torch.inference_mode():
        results = {strength: sample(with_lora(plain, strength)) for strength in STRENGTHS}
    for a in STRENGTHS:
        for b in STRENGTHS:
            assert a == b or (results[a] - results[b]).abs().max() > 1e-2, "each strength changes the result"
    return results


@pytest.mark.parametrize("inplace", [False, True], ids=["new_tensors", "inplace"])
@pytest.mark.parametrize("mode", ["data_parallel", "distributed"])
def test_each_strength_equals_the_plain_graph(models_cache, expected, mode, inplace):
    with torch.inference_mode():  # as ComfyUI executes a prompt: weights loaded and patched there
        base = load(models_cache, inplace)
        with runner_closed(apply_multi_gpu(base, resolve(base, MultiGPURequest(mode, "cpu,cpu")))) as model:
            for strength in STRENGTHS:
                got = sample(with_lora(model, strength))
                torch.testing.assert_close(got, expected[strength], **TOLERANCE,
                                           msg=f"{mode} at strength {strength}")


def test_a_refresh_copies_into_the_existing_replicas(models_cache, loras):
    base = load_tiny_wan(models_cache)
    model = apply_multi_gpu(base, resolve(base, MultiGPURequest("data_parallel", "cpu,cpu")))
    sample(with_lora(model, 1.0))
    runner = runner_of(model)
    replica = runner.parallel.replicas[1]
    before = dict(replica.named_parameters())
    sample(with_lora(model, 0.5))
    assert runner.parallel.replicas[1] is replica
    now = dict(replica.named_parameters())
    assert all(now[name] is before[name] for name in before), "the refresh built new replica tensors"
    source = dict(model.model.diffusion_model.named_parameters())
    for name, tensor in now.items():
        assert torch.equal(tensor, source[name]), name
    runner.close()


def test_the_identity_follows_the_loaded_patches(models_cache, loras):
    model = load_tiny_wan(models_cache)
    base = model.model
    token, unpatched = weights_identity(base)
    assert unpatched is None and weights_identity(model) == (token, None)
    lora, half = with_lora(model, 1.0), with_lora(model, 0.5)
    assert len({weights_identity(lora), weights_identity(half), weights_identity(model)}) == 3
    for patcher in (lora, half, lora):
        sample(patcher)
        assert weights_identity(base) == weights_identity(patcher), "the loaded patches name the weights"
    assert weights_identity(load_tiny_wan(models_cache).model)[0] != token, "each model is its own"
