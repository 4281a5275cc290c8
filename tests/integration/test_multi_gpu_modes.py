"""Multi-GPU modes on ComfyUI's own Wan, sampled through ComfyUI's own sampling and model management.

Every mode's latent is compared with the plain single-device run for the same seed. The
multi-device runs use simulated devices (tests/conftest.py `simulated_devices`): a block or
replica on cpu:1 holds its own tensors there and an op mixing devices raises, as on GPUs;
placement is also proven by recording every Module.to call and by the engines' ran_on records.
"""
import pytest
import torch

from comfyui_parallel.models.multi_gpu.patcher import placement_of
from comfyui_parallel.models.multi_gpu.wrappers import runner_of
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve
from comfyui_parallel.utils.errors import InputError
from multi_gpu_helpers import MoveSpy, load_tiny_wan, load_wan_layers, sample


def multi_gpu(model, mode: str, gpu_ids: str = "cpu,cpu", **options):
    return apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, gpu_ids, **options)))


@pytest.fixture(scope="module")
def reference(models_cache):
    """The plain UNETLoader-equivalent run's latent."""
    return sample(load_tiny_wan(models_cache))


def test_none_equals_plain_exactly(models_cache, reference):
    model = multi_gpu(load_tiny_wan(models_cache), "none")
    torch.testing.assert_close(sample(model), reference, rtol=0, atol=0)


def test_data_parallel_splits_cfg_pair_over_both_devices(models_cache, reference, simulated_devices):
    model = multi_gpu(load_tiny_wan(models_cache), "data_parallel")
    got = sample(model, steps=3)
    # batch 1 vs batch 2 matmuls may round differently in the last bits
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
    ran = runner_of(model).ran_on
    assert len(ran) == 2 * 3, ran  # every step: cond on one replica, uncond on the other
    assert {(index, str(device), rows) for index, device, rows in ran} == {(0, "cpu:0", 1), (1, "cpu:1", 1)}


def test_block_distribution_places_each_block_once_and_never_back(simulated_devices):
    reference = sample(load_wan_layers(8))
    model = multi_gpu(load_wan_layers(8), "block_distribution")
    with MoveSpy(model.model) as spy:
        got = sample(model)
        again = sample(model)
    torch.testing.assert_close(got, reference, rtol=0, atol=0)
    torch.testing.assert_close(again, reference, rtol=0, atol=0)
    placement = placement_of(model.model)
    planned = [str(d) for d in placement.distribution.block_devices]
    assert planned == [f"cpu:{a}" for a in placement.assignment] and set(planned) == {"cpu:0", "cpu:1"}
    assert placement.assignment == sorted(placement.assignment), "runs are contiguous"
    for index, device in enumerate(planned):
        moves = spy.moves_touching(f"diffusion_model.blocks.{index}")
        if device == "cpu:0":  # main-device blocks: ComfyUI's own load, module by module, each once
            assert moves and {d for _, d in moves} == {"cpu"} and len(moves) == len(set(moves)), moves
        else:
            assert moves == [(f"diffusion_model.blocks.{index}", device)], moves
    assert not [m for m in spy.moves if m[0] in ("", "diffusion_model")], "the whole model was moved"
    ran = placement.distribution.ran_on
    assert [(i, str(d)) for i, d in ran] == list(enumerate(planned)) * (2 * 3)


def test_block_distribution_applies_lora_patches_on_the_block_device(models_cache, simulated_devices):
    key = "diffusion_model.blocks.1.self_attn.q.weight"

    def patched(model):
        clone = model.clone()
        weight = clone.model.state_dict()[key]
        clone.add_patches({key: (torch.full_like(weight, 0.01),)}, strength_patch=1.0)
        return clone

    expected = sample(patched(load_tiny_wan(models_cache)))
    after = patched(multi_gpu(load_tiny_wan(models_cache), "block_distribution"))
    torch.testing.assert_close(sample(after), expected, rtol=0, atol=0)
    before = multi_gpu(patched(load_tiny_wan(models_cache)), "block_distribution")
    torch.testing.assert_close(sample(before), expected, rtol=0, atol=0)


def test_block_distribution_over_three_devices(simulated_devices):
    model = multi_gpu(load_wan_layers(12), "block_distribution", gpu_ids="cpu,cpu,cpu")
    expected = sample(load_wan_layers(12))
    torch.testing.assert_close(sample(model), expected, rtol=0, atol=0)
    assert set(placement_of(model.model).assignment) == {0, 1, 2}


@pytest.mark.parametrize("mode", ["data_parallel", "block_distribution"])
def test_a_device_named_twice_is_shared_and_equals_plain(models_cache, reference, simulated_devices, mode):
    """'cpu:1,cpu:1' (the CPU twin of gpu-check's 'cuda:0,cuda:0'): both entries run on the one other device."""
    model = multi_gpu(load_tiny_wan(models_cache), mode, gpu_ids="cpu:1,cpu:1")
    torch.testing.assert_close(sample(model, steps=3), sample(load_tiny_wan(models_cache), steps=3),
                               rtol=1e-4, atol=1e-4)
    assert model.multi_gpu.devices == (torch.device("cpu", 1),) * 2


def test_unload_undoes_the_placement(models_cache, simulated_devices):
    import comfy.model_management

    model = multi_gpu(load_tiny_wan(models_cache), "block_distribution")
    sample(model)
    assert placement_of(model.model) is not None
    comfy.model_management.unload_all_models()
    assert placement_of(model.model) is None
    assert not model.model.diffusion_model.blocks[1]._forward_pre_hooks


def test_offload_device_unloads_after_each_run(models_cache, reference, simulated_devices):
    model = multi_gpu(load_tiny_wan(models_cache), "block_distribution", load_device="offload_device")
    torch.testing.assert_close(sample(model), reference, rtol=0, atol=0)
    assert placement_of(model.model) is None and model.loaded_size() == 0
    torch.testing.assert_close(sample(model), reference, rtol=0, atol=0)


@pytest.mark.parametrize("mode, gpu_ids, options, expected", [
    ("data_parallel", "cpu", {}, "gpu_ids: parallelism_type 'data_parallel' needs at least two devices"),
    ("distributed", "cpu", {}, "gpu_ids: parallelism_type 'distributed' needs at least two devices"),
    ("distributed", "cpu:1,cpu:1", {}, "gpu_ids: names cpu:1 more than once: distributed runs one rank per device"),
    ("none", "7", {}, "gpu_ids: GPU 7 does not exist"),
    ("none", "cpu,banana", {}, "gpu_ids: 'banana' is not a device id"),
    ("sideways", "cpu", {}, "parallelism_type: 'sideways' is not an option"),
    ("data_parallel", "cpu,cpu", {"enable_block_distribution": True},
     "enable_block_distribution: true asks for block_distribution"),
    ("none", "cpu", {"memory_reserve_gb": -1.0}, "memory_reserve_gb: -1.0 is negative"),
])
def test_bad_options_are_clear_errors(models_cache, mode, gpu_ids, options, expected):
    with pytest.raises(InputError) as error:
        multi_gpu(load_tiny_wan(models_cache), mode, gpu_ids, **options)
    assert str(error.value).startswith(expected), str(error.value)


@pytest.mark.parametrize("mode", ["block_distribution", "distributed"])
def test_non_wan_model_refused_naming_what_is_supported(mode):
    import comfy.model_patcher

    class NotWan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    patcher = comfy.model_patcher.ModelPatcher(NotWan(), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(InputError, match=f"model: parallelism_type '{mode}' needs a Wan model, got Linear.*Wan 2"):
        multi_gpu(patcher, mode)


def test_enable_block_distribution_means_block_distribution(models_cache):
    model = multi_gpu(load_tiny_wan(models_cache), "auto", enable_block_distribution=True)
    assert model.multi_gpu.parallelism_type == "block_distribution"


def test_auto_takes_the_recommendation(models_cache):
    model = multi_gpu(load_tiny_wan(models_cache), "auto")
    assert model.multi_gpu.parallelism_type == "data_parallel" and "fits on 2 devices" in model.multi_gpu.reason
