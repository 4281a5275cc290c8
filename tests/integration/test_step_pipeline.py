"""Step pipeline for any model: Wan 2.2's high-noise / low-noise pair with a stage per expert, and one Wan model.

The two tiny experts (devtools/demo_models.py: two seeds of the T2V model, shaped as the real pair) are
loaded by ComfyUI's own loader. Each pipelined video must equal, bit for bit on the CPU, what ComfyUI's
own KSamplerAdvanced node pair gives for its seed (steps 0..b with leftover noise on the high-noise
expert, then b..end with add_noise disabled on the low-noise one), for 1, 2 and 3 stage workers (gloo)
and 1 and 3 videos, pipelined or one video per device; a single model equals KSampler. A stage holds
only the expert its steps use; a LoRA on an expert reaches the stages.
"""
import pytest
import torch

from devtools.demo_models import TINY_WAN, TINY_WAN22_HIGH, TINY_WAN22_LOW, comfy_on_path
from devtools.tiny_svd import write_svd_lora

comfy_on_path()

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from comfyui_parallel.models.comfy import guidance  # noqa: E402
from comfyui_parallel.models.comfy.runtime import find_comfyui_dir  # noqa: E402
from comfyui_parallel.models.step_pipeline import plan, server as step_pipeline  # noqa: E402
from comfyui_parallel.nodes.step_pipeline import StepPipelineSampler  # noqa: E402
from comfyui_parallel.parallel.pool import POOL  # noqa: E402
from comfyui_parallel.utils.errors import Cancelled, InputError  # noqa: E402

STEPS, BOUNDARY, CFG, SEED = 4, 2, 5.0, 42
LATENT = (1, 16, 2, 8, 8)  # EmptyHunyuanLatentVideo 64 x 64, 5 frames
LORA = "tiny_wan_lora.safetensors"


@pytest.fixture(scope="module")
def wan(models_cache, tmp_path_factory):
    """(high, low, single, conditioning, latent): ComfyUI-loaded tiny experts, a Wan 2.1, a LoRA in loras/."""
    torch.set_num_threads(1)  # as the stage workers: float sums group the same way on both sides
    load = lambda name: comfy.sd.load_diffusion_model(str(models_cache / "diffusion_models" / name))  # noqa: E731
    high, low, single = load(TINY_WAN22_HIGH), load(TINY_WAN22_LOW), load(TINY_WAN)
    loras = tmp_path_factory.mktemp("loras")
    write_svd_lora(loras / LORA, high.model.diffusion_model.state_dict())
    folder_paths.add_model_folder_path("loras", str(loras))
    generator = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    negative = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    yield high, low, single, (positive, negative), {"samples": torch.zeros(LATENT)}
    POOL.close_feature(step_pipeline.FEATURE)


def node(name: str):
    return getattr(guidance.comfy_node_module("nodes"), name)()


def advanced(model, latent, seed, sampler, add_noise, start, end, leftover, conds):
    """ComfyUI's own KSamplerAdvanced node."""
    positive, negative = conds
    return node("KSamplerAdvanced").sample(model, add_noise, seed, STEPS, CFG, sampler, "simple", positive, negative,
                                           latent, start, end, leftover)[0]


def pair(wan, seed, sampler, high=None):
    """The plain graph of ComfyUI's Wan 2.2 templates: two KSamplerAdvanced, one per expert."""
    first = advanced(high or wan[0], wan[4], seed, sampler, "enable", 0, BOUNDARY, "enable", wan[3])
    return advanced(wan[1], first, seed, sampler, "disable", BOUNDARY, 10000, "disable", wan[3])["samples"]


def pipeline(wan, stages, videos, sampler="euler_ancestral", schedule="pipeline", split="model_boundary", high=None):
    positive, negative = wan[3]
    return StepPipelineSampler().sample(high or wan[0], "enable", SEED, STEPS, CFG, sampler, "simple", positive,
                                        negative, wan[4], 0, 10000, "disable", videos, ",".join(["cpu"] * stages),
                                        split, schedule, model_2=wan[1], boundary_step=BOUNDARY)


def assert_pair(wan, out, videos, sampler="euler_ancestral", high=None):
    samples = out["samples"]
    assert samples.shape == (videos, *LATENT[1:])
    for n in range(videos):
        assert torch.equal(samples[n:n + 1], pair(wan, SEED + n, sampler, high)), f"video {n}"


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("videos", [1, 3])
def test_pair_pipeline_equals_the_ksampler_advanced_pair_per_seed(wan, stages, videos):
    out, report = pipeline(wan, stages, videos)
    assert_pair(wan, out, videos)
    assert report.startswith(f"step pipeline: {stages} stages, {videos} videos")


def test_each_stage_holds_only_the_expert_its_steps_use(wan):
    _, report = pipeline(wan, 3, 1)
    expert = sum(t.nbytes for t in wan[0].model.state_dict().values()) / 2**20
    assert f"stage 0: steps [0, 1), holds model ({expert:.1f} MiB)" in report
    assert f"stage 1: steps [1, 2), holds model ({expert:.1f} MiB)" in report
    assert f"stage 2: steps [2, 4), holds model_2 ({expert:.1f} MiB)" in report
    _, report = pipeline(wan, 2, 1, split="even", sampler="euler")
    assert "stage 0: steps [0, 2), holds model (" in report and "stage 1: steps [2, 4), holds model_2 (" in report
    _, report = pipeline(wan, 1, 1, sampler="euler")  # one stage runs both experts' steps
    assert f"stage 0: steps [0, 4), holds model + model_2 ({2 * expert:.1f} MiB)" in report


@pytest.mark.parametrize("stages,boundary,ranges", [
    (2, 1, [(0, 1), (1, 6)]),
    (3, 2, [(0, 2), (2, 4), (4, 6)]),
    (4, 1, [(0, 1), (1, 3), (3, 5), (5, 6)]),
    (5, 3, [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]),
])
def test_model_boundary_cuts_at_the_boundary_and_spreads_the_other_stages(wan, stages, boundary, ranges):
    settings = plan.PipelineSettings(SEED, 6, CFG, "euler", "simple", 1, "model_boundary", boundary_step=boundary)
    cut = plan.segments(wan[:2], settings)
    assert [(s.start, s.end) for s in cut] == [(0, boundary), (boundary, 6)]
    assert plan.stage_ranges(settings, stages, cut, None) == ranges


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_sde", "heun"])
def test_other_samplers_through_the_boundary(wan, sampler):
    out, _ = pipeline(wan, 3, 2, sampler=sampler, split="even")
    assert_pair(wan, out, 2, sampler)


@pytest.mark.parametrize("workers", [1, 2])
def test_videos_per_device_equals_the_pair_and_says_so(wan, workers):
    out, report = pipeline(wan, workers, 3, schedule="videos_per_device")
    assert_pair(wan, out, 3)
    assert report.startswith(f"videos_per_device: {workers} devices, 3 videos")
    assert report.count("holds model + model_2") == workers


def test_cancel_stops_every_device_of_videos_per_device_and_the_workers_carry_on(wan):
    positive, negative = wan[3]
    settings = step_pipeline.PipelineSettings(SEED, STEPS, CFG, "euler", "simple", 40, boundary_step=BOUNDARY,
                                              schedule="videos_per_device")
    devices = [torch.device("cpu"), torch.device("cpu", 1)]
    seen = []
    with pytest.raises(Cancelled):
        step_pipeline.run_pipeline(wan[0], positive, negative, wan[4]["samples"], settings, devices,
                                   find_comfyui_dir(), model_2=wan[1], should_cancel=lambda: len(seen) >= 3,
                                   on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][1] == 40 * STEPS and seen[-1][0] < 40 * STEPS
    pids = POOL.pids(step_pipeline.FEATURE)
    out, _ = pipeline(wan, 2, 1, sampler="euler", schedule="videos_per_device")
    assert_pair(wan, out, 1, "euler")
    assert POOL.pids(step_pipeline.FEATURE) == pids


def test_the_low_noise_expert_and_the_boundary_matter(wan):
    """The pair differs from the high-noise expert alone and from carrying x straight across the boundary."""
    positive, negative = wan[3]
    alone = advanced(wan[0], wan[4], SEED, "euler_ancestral", "enable", 0, 10000, "disable", wan[3])["samples"]
    assert not torch.equal(alone, pair(wan, SEED, "euler_ancestral"))
    same_expert = StepPipelineSampler().sample(wan[0], "enable", SEED, STEPS, CFG, "euler_ancestral", "simple",
                                               positive, negative, wan[4], 0, 10000, "disable", 1, "cpu,cpu",
                                               "model_boundary", "pipeline", model_2=wan[0], boundary_step=BOUNDARY)
    assert not torch.equal(same_expert[0]["samples"], alone)  # the boundary restarts the per-step noise


def test_lora_on_the_high_noise_expert_reaches_its_stage(wan):
    lora = node("LoraLoaderModelOnly").load_lora_model_only(wan[0], LORA, 1.0)[0]
    out, _ = pipeline(wan, 2, 2, high=lora)
    assert_pair(wan, out, 2, high=lora)
    assert not torch.equal(out["samples"][:1], pair(wan, SEED, "euler_ancestral"))


def test_one_model_equals_ksampler_per_seed(wan):
    positive, negative = wan[3]
    out, report = StepPipelineSampler().sample(wan[2], "enable", SEED, STEPS, CFG, "euler_ancestral", "simple",
                                               positive, negative, wan[4], 0, 10000, "disable", 3, "cpu,cpu",
                                               "model_boundary", "pipeline")
    for n in range(3):
        plain = node("KSampler").sample(wan[2], SEED + n, STEPS, CFG, "euler_ancestral", "simple", positive, negative,
                                        wan[4])[0]["samples"]
        assert torch.equal(out["samples"][n:n + 1], plain), f"video {n}"
    assert "stage 0: steps [0, 2), holds model (" in report and "model_2" not in report


def test_start_end_and_leftover_noise_as_ksampler_advanced(wan):
    positive, negative = wan[3]
    out, _ = StepPipelineSampler().sample(wan[2], "enable", SEED, STEPS, CFG, "euler", "simple", positive, negative,
                                          wan[4], 1, 3, "enable", 1, "cpu,cpu", "even", "pipeline")
    plain = advanced(wan[2], wan[4], SEED, "euler", "enable", 1, 3, "enable", wan[3])["samples"]
    assert torch.equal(out["samples"], plain)


def test_a_latent_noise_mask_is_sampled_as_ksampler_samples_it(wan):
    """SetLatentNoiseMask's mask reaches every stage: only the masked half is resampled, as in KSampler."""
    positive, negative = wan[3]
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    start = {"samples": torch.randn(LATENT, generator=torch.Generator().manual_seed(8))}
    latent = node("SetLatentNoiseMask").set_mask(start, mask)[0]
    out, _ = StepPipelineSampler().sample(wan[2], "enable", SEED, STEPS, CFG, "euler_ancestral", "simple", positive,
                                          negative, latent, 0, 10000, "disable", 2, "cpu,cpu", "even", "pipeline")
    for n in range(2):
        plain = node("KSampler").sample(wan[2], SEED + n, STEPS, CFG, "euler_ancestral", "simple", positive, negative,
                                        latent)[0]["samples"]
        assert torch.equal(out["samples"][n:n + 1], plain), f"video {n}"
    unmasked = node("KSampler").sample(wan[2], SEED, STEPS, CFG, "euler_ancestral", "simple", positive, negative,
                                       start)[0]["samples"]
    assert not torch.equal(out["samples"][:1], unmasked), "the mask changed nothing"
    assert torch.equal(out["noise_mask"], latent["noise_mask"])


@pytest.mark.parametrize("inputs,message", [
    ({"sampler_name": "dpmpp_2m"}, "sampler_name: 'dpmpp_2m'"),
    ({"boundary_step": 4}, "boundary_step: is 4"),
    ({"start_at_step": 4}, "start_at_step: is 4"),
    ({"gpu_ids": "cpu,cpu,cpu,cpu,cpu"}, "gpu_ids: names 5 stages for 4 steps"),
    ({"gpu_ids": "cuda:7"}, "gpu_ids"),
])
def test_bad_inputs_are_refused_by_name(wan, inputs, message):
    positive, negative = wan[3]
    values = dict(model=wan[0], add_noise="enable", noise_seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                  scheduler="simple", positive=positive, negative=negative, latent_image=wan[4], start_at_step=0,
                  end_at_step=10000, return_with_leftover_noise="disable", num_videos=1, gpu_ids="cpu,cpu",
                  stage_split="even", schedule="pipeline", model_2=wan[1], boundary_step=BOUNDARY)
    values.update(inputs)
    with pytest.raises(InputError, match=message):
        StepPipelineSampler().sample(**values)


def test_patches_on_model_2_are_refused_naming_model_2(wan):
    patched = wan[1].clone()
    patched.add_object_patch("diffusion_model.head", torch.nn.Identity())
    positive, negative = wan[3]
    with pytest.raises(InputError, match="model_2: carries patches .*object_patches"):
        StepPipelineSampler().sample(wan[0], "enable", SEED, STEPS, CFG, "euler", "simple", positive, negative,
                                     wan[4], 0, 10000, "disable", 1, "cpu,cpu", "model_boundary", "pipeline",
                                     model_2=patched, boundary_step=BOUNDARY)
