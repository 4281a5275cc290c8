"""The node classes in-process: the loader's own refusals (ComfyUI's validation never sees these)."""
import pytest
import torch

from multi_gpu_helpers import TINY_WAN, sample  # configures ComfyUI for the CPU first

import folder_paths  # noqa: E402
from comfyui_parallel.nodes.multi_gpu import MultiGPUApply, MultiGPULoader  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402

OPTIONS = dict(load_device="main_device", parallelism_type="block_distribution", gpu_ids="cpu,cpu",
               enable_block_distribution=False, memory_reserve_gb=0.0)


@pytest.fixture
def diffusion_folder(tmp_path, models_cache):
    """A diffusion_models folder holding the tiny Wan and a corrupt file, registered with ComfyUI."""
    (tmp_path / TINY_WAN).symlink_to(models_cache / "diffusion_models" / TINY_WAN)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(tmp_path)], saved[1])
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths["diffusion_models"] = saved
    folder_paths.filename_list_cache.clear()


def test_loader_gives_a_multi_gpu_model_that_samples(diffusion_folder):
    (model,) = MultiGPULoader().load(TINY_WAN, "fp32", **OPTIONS)
    assert model.multi_gpu.parallelism_type == "block_distribution"
    assert torch.isfinite(sample(model)).all()


@pytest.mark.parametrize("name, precision, expected", [
    ("missing.safetensors", "fp32", "unet_name: 'missing.safetensors' not found in the diffusion_models folder"),
    ("broken.safetensors", "fp32", "unet_name: 'broken.safetensors' is not a readable model file"),
    (TINY_WAN, "int4", "base_precision: 'int4' is not an option"),
])
def test_loader_refusals_name_the_input(diffusion_folder, name, precision, expected):
    with pytest.raises(InputError) as error:
        MultiGPULoader().load(name, precision, **OPTIONS)
    assert str(error.value).startswith(expected), str(error.value)


def test_apply_leaves_its_input_model_unchanged(diffusion_folder):
    (model,) = MultiGPULoader().load(TINY_WAN, "fp32", **{**OPTIONS, "parallelism_type": "none", "gpu_ids": "cpu"})
    (applied,) = MultiGPUApply().apply(model, **OPTIONS)
    assert applied is not model and applied.model is model.model
    assert model.multi_gpu.parallelism_type == "none" and applied.multi_gpu.parallelism_type == "block_distribution"
