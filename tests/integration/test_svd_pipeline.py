"""SVD step pipeline with ComfyUI's own SVD class (tiny config) and ComfyUI's own sampling.

Every pipelined video must equal ComfyUI's KSampler result for its seed bit for bit on the CPU:
first in-process (the stage runner alone, for every sampler the pipeline accepts), then through
real stage worker processes (gloo) for 1, 2 and 3 stages and 1, 2 and 5 videos.
"""
import os
import signal

import pytest
import torch

from devtools.demo_models import comfy_on_path
from devtools.tiny_svd import tiny_svd_conditioning, tiny_svd_model

comfy_on_path()

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
from comfyui_parallel.models.comfy import sampling  # noqa: E402
from comfyui_parallel.models.step_pipeline import server as svd_pipeline_run, stage as svd_stage  # noqa: E402
from comfyui_parallel.parallel.pool import POOL  # noqa: E402
from comfyui_parallel.models.comfy.runtime import find_comfyui_dir  # noqa: E402
from comfyui_parallel.nodes.svd_pipeline import SVDStepPipelineSampler  # noqa: E402
from comfyui_parallel.utils.errors import Cancelled, InputError, WorkerError  # noqa: E402

STEPS, CFG, SEED = 4, 2.5, 11


@pytest.fixture(scope="module")
def svd():
    torch.set_num_threads(1)
    model = tiny_svd_model(seed=0)
    positive, negative, latent = tiny_svd_conditioning(frames=2, height=64, width=64)
    yield model, positive, negative, latent
    POOL.close_feature(svd_pipeline_run.FEATURE)


def ksampler(svd, seed, sampler_name="euler_ancestral", scheduler="karras", steps=STEPS):
    """ComfyUI's KSampler path (nodes.common_ksampler without the node): seeded noise, comfy.sample.sample."""
    model, positive, negative, latent = svd
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, CFG, sampler_name, scheduler, positive, negative, latent,
                               seed=seed, disable_pbar=True)


def chained(svd, seed, sampler_name, cuts, scheduler="karras"):
    """The stage runner over consecutive step ranges, state carried from one to the next."""
    model, positive, negative, latent = svd
    sigmas = sampling.schedule_sigmas(model, cuts[-1], sampler_name, scheduler)
    carry = None
    for start, end in zip(cuts, cuts[1:]):
        carry = sampling.run_stage(model, positive, negative, latent,
                                    svd_stage.StageJob(sigmas, start, end, seed, sampler_name, CFG), carry)
    return carry["samples"]


@pytest.mark.parametrize("sampler_name", svd_stage.SPLITTABLE_SAMPLERS)
def test_every_accepted_sampler_splits_exactly(svd, sampler_name):
    full = ksampler(svd, SEED, sampler_name)
    for cuts in ([0, 2, 4], [0, 1, 3, 4]):
        assert torch.equal(chained(svd, SEED, sampler_name, cuts), full), cuts


@pytest.mark.parametrize("sampler_name", ["dpmpp_2m", "lms", "uni_pc", "dpmpp_2m_sde", "res_multistep", "heunpp2"])
def test_refused_samplers_really_change_when_split(svd, sampler_name):
    full = ksampler(svd, SEED, sampler_name)
    assert not torch.equal(chained(svd, SEED, sampler_name, [0, 2, 4]), full)
    with pytest.raises(InputError, match="sampler_name.*euler_ancestral"):
        svd_stage.check_splittable(sampler_name)


def test_plain_ksampler_advanced_chaining_is_not_enough_for_ancestral(svd):
    """Why the runner carries the generator: restarting the seeded noise at a stage changes the video."""
    model, positive, negative, latent = svd
    noise = comfy.sample.prepare_noise(latent, SEED)
    first = comfy.sample.sample(model, noise, STEPS, CFG, "euler_ancestral", "karras", positive, negative, latent,
                                last_step=2, seed=SEED, disable_pbar=True)
    second = comfy.sample.sample(model, torch.zeros_like(noise), STEPS, CFG, "euler_ancestral", "karras", positive,
                                 negative, first, start_step=2, seed=SEED, disable_pbar=True)
    assert not torch.allclose(second, ksampler(svd, SEED), atol=1e-3)


def run(svd, stages, videos, sampler_name="euler_ancestral", **kwargs):
    model, positive, negative, latent = svd
    settings = svd_pipeline_run.PipelineSettings(SEED, STEPS, CFG, sampler_name, "karras", videos)
    devices = [torch.device("cpu", k) for k in range(stages)]
    return svd_pipeline_run.run_pipeline(model, positive, negative, latent, settings, devices, find_comfyui_dir(),
                                         **kwargs)


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("videos", [1, 2, 5])
def test_pipeline_equals_ksampler_per_seed(svd, stages, videos):
    result = run(svd, stages, videos)
    frames = svd[3].shape[0]
    assert result.samples.shape == (videos * frames, *svd[3].shape[1:])
    for n in range(videos):
        assert torch.equal(result.samples[n * frames:(n + 1) * frames], ksampler(svd, SEED + n)), f"video {n}"
    assert [tuple(s.steps) for s in result.report.stages] == svd_stage_ranges(stages)
    assert all(s.samples == videos for s in result.report.stages)
    assert 0.0 <= result.report.bubble_fraction < 1.0 and result.report.samples_per_minute > 0


def svd_stage_ranges(stages):
    from comfyui_parallel.parallel.pipeline import split_steps

    return split_steps(STEPS, stages)


def test_brownian_sde_sampler_through_workers(svd):
    result = run(svd, 2, 2, sampler_name="dpmpp_sde")
    assert torch.equal(result.samples[2:], ksampler(svd, SEED + 1, "dpmpp_sde"))


def test_progress_counts_videos_times_steps_and_cancel_stops_all_stages(svd):
    seen = []
    with pytest.raises(Cancelled):
        run(svd, 2, 40, on_progress=lambda done, total: seen.append((done, total)), should_cancel=lambda: len(seen) >= 3)
    assert seen and seen[-1][1] == 40 * STEPS and seen[-1][0] < 40 * STEPS
    result = run(svd, 2, 2)  # the same workers carry on after a cancel
    assert torch.equal(result.samples[:2], ksampler(svd, SEED))


def test_crashed_stage_is_a_clear_error_and_the_next_run_restarts(svd):
    run(svd, 2, 1)  # workers started
    key = svd_pipeline_run.pool_key([torch.device("cpu"), torch.device("cpu")], find_comfyui_dir())
    group = POOL.group(key, None)
    victim = group.pids[1]

    def kill_once(done, total):
        if done == 1:
            os.kill(victim, signal.SIGKILL)

    with pytest.raises(WorkerError, match="worker 1"):
        run(svd, 2, 30, on_progress=kill_once)
    assert torch.equal(run(svd, 2, 1).samples, ksampler(svd, SEED))


def test_node_outputs_latent_in_seed_order_and_report(svd):
    model, positive, negative, latent = svd
    out, report = SVDStepPipelineSampler().sample(model, positive, negative, {"samples": latent}, SEED, STEPS, CFG,
                                                  "euler", "karras", 2, "cpu,cpu", "balanced")
    assert torch.equal(out["samples"][2:], ksampler(svd, SEED + 1, "euler"))
    assert "stage 0: steps [0, 2)" in report and "stage 1: steps [2, 4)" in report
    assert "bubble fraction" in report and "videos per minute" in report


@pytest.mark.parametrize("inputs,message", [
    ({"sampler_name": "dpmpp_2m"}, "sampler_name: 'dpmpp_2m'"),
    ({"gpu_ids": "cpu,cpu,cpu,cpu,cpu"}, "gpu_ids: names 5 stages for 4 steps"),
    ({"gpu_ids": "cpu,banana"}, "gpu_ids"),
])
def test_node_refuses_bad_inputs(svd, inputs, message):
    model, positive, negative, latent = svd
    args = dict(model=model, positive=positive, negative=negative, latent_image={"samples": latent}, seed=SEED,
                steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="karras", num_videos=1, gpu_ids="cpu,cpu",
                stage_split="even")
    with pytest.raises(InputError, match=message):
        SVDStepPipelineSampler().sample(**{**args, **inputs})
