"""Comfy-Org's fp8_scaled Wan files (float8 weights, per-layer scale_weight, the scaled_fp8 marker) in every
mode of the pack, each equal to the plain UNETLoader graph on the same file.

On the CPU ComfyUI computes these files with manual cast (its scaled fp8 ops multiply each weight
by its scale_weight); the distributed workers must rebuild the model with those same ops, and the
loaders' base_precision default must keep the file's fp8 weights (not upcast them to bf16).
"""
import pytest
import torch

from multi_gpu_helpers import runner_closed, sample  # configures ComfyUI for the CPU first

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.offload.patcher import OffloadSettings, apply_offload  # noqa: E402
from comfyui_parallel.nodes.multi_gpu import MultiGPULoader  # noqa: E402
from devtools.demo_models import TINY_WAN, TINY_WAN_FP8_SCALED, TINY_WAN_LORA  # noqa: E402

# exact where the math is the same; data_parallel runs cond and uncond as batch-1 calls and distributed
# attends over token shards, which round differently in the last bits
MODES = {"none": 0.0, "data_parallel": 1e-4, "block_distribution": 0.0, "distributed": 1e-4}
Q_WEIGHT = "blocks.0.self_attn.q"


def unet_loader(models_cache, name=TINY_WAN_FP8_SCALED, dtype=None):
    """UNETLoader's MODEL (weight_dtype default: ComfyUI's choice for the file)."""
    options = {"dtype": dtype} if dtype is not None else {}
    return comfy.sd.load_diffusion_model(str(models_cache / "diffusion_models" / name), model_options=options)


@pytest.fixture(scope="module")
def reference(models_cache):
    return sample(unet_loader(models_cache))


def test_the_file_is_what_comfyui_detects_as_fp8_scaled(models_cache):
    model = unet_loader(models_cache)
    layer = model.model.diffusion_model.get_submodule(Q_WEIGHT)
    assert model.model.model_config.scaled_fp8 == torch.float8_e4m3fn
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale_weight.dtype == torch.float32
    assert float(layer.scale_weight) != 1.0, "the file's per-layer scale was loaded"
    full = sample(unet_loader(models_cache, TINY_WAN))
    assert (sample(model) - full).abs().max() > 1e-3, "the fp8 weights differ from the full file's"


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_equals_the_unet_loader_graph(models_cache, reference, mode):
    model = unet_loader(models_cache)
    with runner_closed(apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, "cpu,cpu")))) as patched:
        torch.testing.assert_close(sample(patched), reference, rtol=MODES[mode], atol=MODES[mode])


@pytest.mark.parametrize("blocks_to_swap", [1, 2])
def test_offload_equals_the_unet_loader_graph(models_cache, reference, blocks_to_swap):
    model = apply_offload(unet_loader(models_cache), OffloadSettings(blocks_to_swap, 1))
    torch.testing.assert_close(sample(model), reference, rtol=0, atol=0)


@pytest.fixture
def diffusion_folder(models_cache):
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(models_cache / "diffusion_models")], saved[1])
    folder_paths.filename_list_cache.clear()
    yield
    folder_paths.folder_names_and_paths["diffusion_models"] = saved
    folder_paths.filename_list_cache.clear()


def load_with(precision: str, name=TINY_WAN_FP8_SCALED):
    return MultiGPULoader().load(name, precision, load_device="main_device", parallelism_type="none",
                                 gpu_ids="cpu", enable_block_distribution=False, memory_reserve_gb=0.0)[0]


def test_the_loaders_default_keeps_the_files_fp8_weights(diffusion_folder, models_cache, reference):
    assert MultiGPULoader.INPUT_TYPES()["required"]["base_precision"][1]["default"] == "default"
    model = load_with("default")
    assert model.model.diffusion_model.get_submodule(Q_WEIGHT).weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(sample(model), reference, rtol=0, atol=0)
    upcast = load_with("bf16")
    assert upcast.model.diffusion_model.get_submodule("blocks.0.norm3").weight.dtype == torch.bfloat16


def test_fp8_weights_of_a_full_file_on_the_cpu_equal_the_unet_loader(diffusion_folder, models_cache):
    """base_precision fp8_e4m3fn is ComfyUI's weight_dtype fp8_e4m3fn: computed with manual cast on the CPU."""
    expected = sample(unet_loader(models_cache, TINY_WAN, torch.float8_e4m3fn))
    model = load_with("fp8_e4m3fn", TINY_WAN)
    assert model.model.diffusion_model.get_submodule(Q_WEIGHT).weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(sample(model), expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["block_distribution", "distributed"])
def test_a_lora_on_the_fp8_scaled_file_equals_the_unet_loader_graph(models_cache, mode):
    """ComfyUI patches scaled fp8 weights through the layer's own set_weight (re-scaled, stochastic rounding);
    it does so under the inference mode it executes prompts in (outside it, its fp8 rounding refuses autograd)."""
    folder_paths.add_model_folder_path("loras", str(models_cache / "loras"))
    folder_paths.filename_list_cache.clear()
    node = guidance.comfy_node_module("nodes").LoraLoaderModelOnly()

    def lora(model):
        return node.load_lora_model_only(model, TINY_WAN_LORA, 1.0)[0]

    with torch.inference_mode():
        expected = sample(lora(unet_loader(models_cache)))
        assert (expected - sample(unet_loader(models_cache))).abs().max() > 1e-2, "the LoRA changes the result"
        model = unet_loader(models_cache)
        with runner_closed(lora(apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, "cpu,cpu"))))) as patched:
            torch.testing.assert_close(sample(patched), expected, rtol=MODES[mode], atol=MODES[mode])
