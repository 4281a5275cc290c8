"""SVD step pipeline on patched MODELs: a LoRA (LoraLoaderModelOnly) and the video CFG guidance nodes.

The stage workers rebuild the model, so the LoRA must reach them as patched weights and the CFG
patch as plain data re-applied with ComfyUI's own node. Each pipelined video must still equal
ComfyUI's KSampler on the patched MODEL for its seed, bit for bit on the CPU; patches the workers
cannot rebuild are refused by name.
"""
import pytest
import torch

from devtools.demo_models import comfy_on_path
from devtools.tiny_svd import tiny_svd_conditioning, tiny_svd_model, write_svd_lora

comfy_on_path()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance, weights  # noqa: E402
from comfyui_parallel.models.step_pipeline import patches as svd_model_patches, server as svd_pipeline_run  # noqa: E402
from comfyui_parallel.parallel.pool import POOL  # noqa: E402
from comfyui_parallel.models.comfy.runtime import find_comfyui_dir  # noqa: E402
from comfyui_parallel.nodes.svd_pipeline import SVDStepPipelineSampler  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402

STEPS, CFG, SEED = 4, 2.5, 5
LORA = "tiny_svd_lora.safetensors"


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    """A tiny SVD of its own (LoRA runs patch its weights in place), its conditioning, a LoRA for it."""
    torch.set_num_threads(1)
    model = tiny_svd_model(seed=3)
    loras = tmp_path_factory.mktemp("loras")
    write_svd_lora(loras / LORA, model.model.diffusion_model.state_dict())
    folder_paths.add_model_folder_path("loras", str(loras))
    positive, negative, latent = tiny_svd_conditioning(frames=3, height=64, width=64)
    yield model, positive, negative, latent
    POOL.close_feature(svd_pipeline_run.FEATURE)


def comfy_node(module: str, name: str):
    return getattr(guidance.comfy_node_module(module), name)()


def with_lora(model, strength=1.0):
    return comfy_node("nodes", "LoraLoaderModelOnly").load_lora_model_only(model, LORA, strength)[0]


def guided(model, node="VideoLinearCFGGuidance", min_cfg=1.0):
    return comfy_node("comfy_extras.nodes_video_model", node).patch(model, min_cfg)[0]


def ksampler(svd, model, seed, sampler_name="euler_ancestral"):
    _, positive, negative, latent = svd
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, STEPS, CFG, sampler_name, "karras", positive, negative, latent,
                               seed=seed, disable_pbar=True)


def pipeline(svd, model, stages=2, videos=2):
    _, positive, negative, latent = svd
    settings = svd_pipeline_run.PipelineSettings(SEED, STEPS, CFG, "euler_ancestral", "karras", videos)
    devices = [torch.device("cpu", k) for k in range(stages)]
    result = svd_pipeline_run.run_pipeline(model, positive, negative, latent, settings, devices, find_comfyui_dir())
    return result.samples.split(latent.shape[0])


def assert_videos_equal_ksampler(svd, model, videos):
    for n, video in enumerate(videos):
        assert torch.equal(video, ksampler(svd, model, SEED + n)), f"video {n}"


def test_patched_weights_are_the_ones_comfyui_loads(svd):
    lora = with_lora(svd[0], 0.8)
    ours = weights.patched_state_dict(lora)
    comfy.model_management.load_models_gpu([lora])  # ComfyUI patches the shared model in place
    loaded = lora.model.state_dict()
    assert ours.keys() == loaded.keys() and all(torch.equal(ours[k], loaded[k]) for k in ours)
    assert not torch.equal(ours["diffusion_model.out.2.weight"], lora.get_key_patches()["diffusion_model.out.2.weight"][0][0])
    assert weights.patched_state_dict(svd[0]).keys() == ours.keys()


def test_lora_videos_equal_ksampler_on_the_lora_model(svd):
    plain, lora = svd[0], with_lora(svd[0])
    plain_first = ksampler(svd, plain, SEED)
    assert_videos_equal_ksampler(svd, lora, pipeline(svd, lora))  # KSampler leaves the LoRA patched in place
    assert not torch.equal(ksampler(svd, lora, SEED), plain_first)
    assert torch.equal(pipeline(svd, plain, videos=1)[0], plain_first)  # the original weights, not the loaded LoRA


def test_linear_cfg_guidance_videos_equal_ksampler(svd):
    model = guided(svd[0], min_cfg=1.0)
    assert svd_model_patches.describe_patches(model) == {"node": "VideoLinearCFGGuidance", "min_cfg": 1.0}
    videos = pipeline(svd, model)
    assert_videos_equal_ksampler(svd, model, videos)
    assert not torch.equal(videos[0], ksampler(svd, svd[0], SEED))


def test_triangle_cfg_guidance_over_a_lora_equals_ksampler(svd):
    model = guided(with_lora(svd[0], 0.5), "VideoTriangleCFGGuidance", min_cfg=1.5)
    assert svd_model_patches.describe_patches(model) == {"node": "VideoTriangleCFGGuidance", "min_cfg": 1.5}
    assert_videos_equal_ksampler(svd, model, pipeline(svd, model, stages=3, videos=1))


def node_call(svd, model):
    _, positive, negative, latent = svd
    return SVDStepPipelineSampler().sample(model, positive, negative, {"samples": latent}, SEED, STEPS, CFG,
                                           "euler", "karras", 1, "cpu,cpu", "even")


def test_unknown_cfg_function_is_refused_naming_what_is_supported(svd):
    patched = svd[0].clone()
    patched.set_model_sampler_cfg_function(lambda args: args["cond"])
    with pytest.raises(InputError, match=r"model: carries patches .*sampler_cfg_function .*<lambda>.*"
                                         r"LoraLoaderModelOnly.*VideoLinearCFGGuidance / VideoTriangleCFGGuidance"):
        node_call(svd, patched)


@pytest.mark.parametrize("patch,named", [
    (lambda m: m.add_object_patch("diffusion_model.out", torch.nn.Identity()), "object_patches"),
    (lambda m: m.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v)), "transformer_options.patches"),
    (lambda m: m.set_model_sampler_post_cfg_function(lambda args: args["denoised"]), "sampler_post_cfg_function"),
])
def test_other_patches_are_refused_by_name(svd, patch, named):
    patched = guided(svd[0])
    patch(patched)
    with pytest.raises(InputError, match=f"model: carries patches .*{named}"):
        node_call(svd, patched)


def test_guidance_is_recognised_from_the_module_comfyui_loads_by_path(svd):
    """ComfyUI's server loads comfy_extras files by path, under a module name that is the path."""
    import importlib.util
    import sys

    path = find_comfyui_dir() / "comfy_extras" / "nodes_video_model.py"
    name = str(path.with_suffix(""))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        model = module.VideoTriangleCFGGuidance().patch(svd[0], 2.0)[0]
        assert svd_model_patches.describe_patches(model) == {"node": "VideoTriangleCFGGuidance", "min_cfg": 2.0}
    finally:
        del sys.modules[name]
