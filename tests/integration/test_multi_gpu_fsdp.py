"""distributed with weight_sharding fsdp: FSDP2-sharded blocks in gloo workers, sampled by ComfyUI in-process.

Each run is compared with the plain single-process graph for the same seed; what each rank
holds is measured from its tensors in the worker. The Wan has dim 256 (two heads), 4 blocks.
"""
import pytest
import torch

from multi_gpu_helpers import load_tiny_wan, sample  # configures ComfyUI for the CPU first

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from comfyui_parallel.models.wan.family import wan_blocks  # noqa: E402
from comfyui_parallel.parallel.plan import module_bytes  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402
from devtools.demo_models import TINY_WAN_LORA  # noqa: E402

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # attention on token shards rounds differently in the last bits
HELD = "models.multi_gpu.sharding:held_bytes"


def wan256():
    from devtools.demo_models import tiny_wan_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(dim=256, num_layers=4, seed=3))


def fsdp(model, gpu_ids: str, sharding: str = "fsdp"):
    return apply_multi_gpu(model, resolve(model, MultiGPURequest("distributed", gpu_ids, weight_sharding=sharding)))


@pytest.fixture(scope="module")
def reference():
    return sample(wan256())


@pytest.mark.parametrize("gpu_ids", ["cpu,cpu", "cpu,cpu,cpu"])
def test_fsdp_equals_plain_and_each_rank_holds_one_nth_of_the_blocks(reference, gpu_ids):
    model = fsdp(wan256(), gpu_ids)
    runner = runner_of(model)
    try:
        assert model.multi_gpu.weight_sharding == "fsdp"
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
        held = runner.lease.get().call(HELD)
        blocks = sum(module_bytes(b) for b in wan_blocks(wan256().model.diffusion_model))
        world = len(gpu_ids.split(","))
        assert {h["sharding"] for h in held} == {"fsdp"}
        assert sum(h["blocks"] for h in held) == blocks, "the shards add up to the blocks, nothing gathered left"
        assert max(h["blocks"] for h in held) <= blocks / world * 1.02, f"{[h['blocks'] for h in held]} of {blocks}"
        assert len({h["rest"] for h in held}) == 1, "embeddings and head are replicated"
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)  # the second prompt: kept shards
    finally:
        runner.close()


def test_four_workers_split_cfg_and_sequence_over_fsdp_shards(reference):
    model = fsdp(wan256(), "cpu,cpu,cpu,cpu")
    runner = runner_of(model)
    try:
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
        assert runner.last_tokens and len(runner.last_tokens) == 4
        torch.testing.assert_close(sample(model, cfg=1.0), sample(wan256(), cfg=1.0), **TOLERANCE)
        held = [h["blocks"] for h in runner.lease.get().call(HELD)]
        assert max(held) <= sum(held) / 4 * 1.02
    finally:
        runner.close()


def test_replicate_holds_whole_blocks_and_auto_replicates_what_fits(reference):
    model = fsdp(wan256(), "cpu,cpu", sharding="auto")
    runner = runner_of(model)
    try:
        assert model.multi_gpu.weight_sharding == "replicate", "a replica fits the CPU: auto replicates"
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
        held = runner.lease.get().call(HELD)
        blocks = sum(module_bytes(b) for b in wan_blocks(model.model.diffusion_model))
        assert [h["blocks"] for h in held] == [blocks, blocks]
    finally:
        runner.close()


def test_server_weights_and_workers_share_one_copy(reference):
    model = fsdp(wan256(), "cpu,cpu")
    runner = runner_of(model)
    try:
        sample(model)
        shared = runner.lease.weights.open()
        server = dict(model.model.diffusion_model.named_parameters())
        same = [name for name, tensor in server.items() if tensor.data_ptr() == shared[name].data_ptr()]
        assert sorted(same) == sorted(server), "ComfyUI's CPU weights are the shared copy, not a second one"
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    finally:
        runner.close()


def test_a_real_lora_reaches_the_shards(models_cache):
    folder_paths.add_model_folder_path("loras", str(models_cache / "loras"))
    folder_paths.filename_list_cache.clear()
    node = guidance.comfy_node_module("nodes").LoraLoaderModelOnly()
    expected = sample(node.load_lora_model_only(load_tiny_wan(models_cache), TINY_WAN_LORA, 1.0)[0])
    model = fsdp(load_tiny_wan(models_cache), "cpu,cpu")
    try:
        plain = sample(model)
        torch.testing.assert_close(sample(node.load_lora_model_only(model, TINY_WAN_LORA, 1.0)[0]), expected,
                                   **TOLERANCE)
        assert (plain - expected).abs().max() > 1e-3, "the LoRA changes the result"
    finally:
        runner_of(model).close()


def test_fsdp_outside_distributed_is_an_input_error():
    model = wan256()
    with pytest.raises(InputError, match="weight_sharding"):
        resolve(model, MultiGPURequest("data_parallel", "cpu,cpu", weight_sharding="fsdp"))
    with pytest.raises(InputError, match="weight_sharding"):
        resolve(model, MultiGPURequest("distributed", "cpu,cpu", weight_sharding="zero3"))
