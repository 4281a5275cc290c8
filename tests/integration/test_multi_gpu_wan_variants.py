"""Wan 2.1 I2V and Wan 2.2 TI2V 5B under every Multi-GPU mode, sampled by ComfyUI in-process.

The inputs are what ComfyUI's own nodes hand the sampler, built directly (no VAE or CLIP
vision model needed):
- I2V (WanImageToVideo): CONDITIONING with concat_latent_image + concat_mask (WAN21 concatenates
  them to the noise: 16 + 4 + 16 = in_dim 36) and clip_vision_output (img_emb's CLIP features).
- TI2V 5B (Wan22ImageToVideoLatent): a 48-channel latent whose first frame is the start image,
  with a noise_mask; WAN22 turns the mask into one timestep per latent frame.
Each mode's latent is compared with the plain model's for the same seed.
"""
import gc
from dataclasses import dataclass

import pytest
import torch

from multi_gpu_helpers import conditioning, sample  # configures ComfyUI for the CPU first

import comfy.clip_vision  # noqa: E402
import comfy.sd  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from devtools.demo_models import TINY_WAN22_TI2V, TINY_WAN_I2V  # noqa: E402

# mode -> tolerance: exact where the math is the same; data_parallel runs cond and uncond as batch-1
# calls and distributed attends over token shards, which round differently in the last bits
MODES = {"none": 0.0, "data_parallel": 1e-4, "block_distribution": 0.0, "distributed": 1e-4}


@dataclass
class VariantInputs:
    """A model file and what the sampler gets for it."""

    file: str
    conds: tuple
    latent: torch.Tensor
    noise_mask: torch.Tensor | None = None


def i2v_inputs(frames: int = 2, size: int = 8) -> VariantInputs:
    """WanImageToVideo's output for a start image: image latent + mask in the conds, CLIP vision features."""
    generator = torch.Generator().manual_seed(9)
    image_latent = torch.randn(1, 16, frames, size, size, generator=generator)
    mask = torch.ones(1, 1, frames, size, size)
    mask[:, :, :1] = 0.0
    vision = comfy.clip_vision.Output()
    vision.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=generator)
    extra = {"concat_latent_image": image_latent, "concat_mask": mask, "clip_vision_output": vision}
    positive, negative = conditioning()
    conds = tuple([[c[0][0], dict(c[0][1], **extra)]] for c in (positive, negative))
    return VariantInputs(TINY_WAN_I2V, conds, torch.zeros(1, 16, frames, size, size))


def ti2v_inputs(frames: int = 3, size: int = 8) -> VariantInputs:
    """Wan22ImageToVideoLatent's output: the start image's latent in frame 0, a noise_mask keeping it."""
    latent = torch.zeros(1, 48, frames, size, size)
    latent[:, :, :1] = torch.randn(1, 48, 1, size, size, generator=torch.Generator().manual_seed(9))
    mask = torch.ones(1, 1, frames, size, size)
    mask[:, :, :1] = 0.0
    return VariantInputs(TINY_WAN22_TI2V, conditioning(), latent, mask)


VARIANTS = {"wan21_i2v": i2v_inputs, "wan22_ti2v_5b": ti2v_inputs}


def load(models_cache, inputs: VariantInputs):
    return comfy.sd.load_diffusion_model(str(models_cache / "diffusion_models" / inputs.file))


def run(model, inputs: VariantInputs) -> torch.Tensor:
    return sample(model, conds=inputs.conds, latent=inputs.latent, noise_mask=inputs.noise_mask)


def multi_gpu(model, mode: str, gpu_ids: str = "cpu,cpu"):
    return apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, gpu_ids)))


@pytest.fixture(scope="module")
def references(models_cache):
    """The plain model's latent per variant."""
    return {name: run(load(models_cache, make()), make()) for name, make in VARIANTS.items()}


@pytest.fixture(scope="module")
def workers(models_cache):
    """One distributed MODEL held for the module, so the distributed tests share started workers."""
    keeper = multi_gpu(load(models_cache, i2v_inputs()), "distributed")
    runner_of(keeper).lease.get()
    yield keeper
    runner_of(keeper).close()
    gc.collect()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_mode_equals_the_plain_model(models_cache, references, workers, variant, mode, request):
    if mode in ("data_parallel", "block_distribution"):
        request.getfixturevalue("simulated_devices")  # cpu:1 holds its own tensors, as a second GPU does
    inputs = VARIANTS[variant]()
    model = multi_gpu(load(models_cache, inputs), mode)
    tolerance = MODES[mode]
    torch.testing.assert_close(run(model, inputs), references[variant], rtol=tolerance, atol=tolerance)
    if mode == "data_parallel":
        assert {str(device) for _, device, _ in runner_of(model).ran_on} == {"cpu:0", "cpu:1"}


def test_i2v_conditioning_reaches_the_model(models_cache, references):
    """The image latent and CLIP features change the result (so the comparisons above test them)."""
    plain = i2v_inputs()
    plain.conds = conditioning()
    assert (run(load(models_cache, plain), plain) - references["wan21_i2v"]).abs().max() > 1e-3


def test_ti2v_keeps_the_start_frame_and_denoises_the_rest(references):
    """noise_mask 0 on frame 0: ComfyUI keeps the start image there; the other frames are generated."""
    inputs, result = ti2v_inputs(), references["wan22_ti2v_5b"]
    torch.testing.assert_close(result[:, :, :1], inputs.latent[:, :, :1], rtol=0, atol=1e-6)
    assert result[:, :, 1:].abs().mean() > 0.1


def test_four_workers_split_cfg_and_sequence(models_cache, references):
    """Two CFG groups of two sequence ranks: per-frame timesteps, image latent and CLIP features split by row."""
    models = []  # both held, so the second variant reuses the started workers
    for variant, make in VARIANTS.items():
        inputs = make()
        models.append(multi_gpu(load(models_cache, inputs), "distributed", "cpu,cpu,cpu,cpu"))
        assert runner_of(models[-1]).cfg_degree == 2
        torch.testing.assert_close(run(models[-1], inputs), references[variant], rtol=1e-4, atol=1e-4)
