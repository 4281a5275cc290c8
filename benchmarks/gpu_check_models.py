"""The model parts of `make gpu-check` (see gpu_check.py): SeedVR at 720p, the Multi-GPU modes on one device.

SeedVR runs through models/seedvr's public pipeline (`SeedVRModel`, `upscale`) with the loader's
defaults (blocks_to_swap 0, no VAE tiling) and one step; the peak of each phase is read when the
next begins (the DiT's first forward ends the encode phase, the VAE's first decode the DiT phase).
The modes are the pack's own Multi-GPU patcher over `sizes.mode_devices` (cuda:0,cuda:0: both
entries share the GPU, so its streams and copies run) and distributed with one NCCL rank, on a small
Wan sampled by ComfyUI's sampler, and the step pipeline with two stages sharing the GPU (over gloo)
on a tiny SVD: each equal to plain within bf16 tolerance.
"""
import time

import torch

from gpu_check import GIB, Sizes, figure, peak_bytes, reset_peak


def _random_seedvr(name: str, sizes: Sizes, device: torch.device):
    """SeedVR `name` (or the tiny configs) built on the device, random weights, rotary frequencies as built."""
    from comfyui_parallel.models.seedvr import config
    from comfyui_parallel.models.seedvr.dit import NaDiT
    from comfyui_parallel.models.seedvr.pipeline import SeedVRModel
    from comfyui_parallel.models.seedvr.vae import VideoVAE

    variant = config.variant(name)
    tiny = (config.small_dit(variant.dit.family), config.small_vae())
    dit_cfg, vae_cfg = tiny if sizes.seedvr_tiny else (variant.dit, config.VAE_FULL)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device).manual_seed(0)
    with torch.device(device):
        dit, vae = NaDiT(dit_cfg), VideoVAE(vae_cfg)
    for module in (dit, vae):
        with torch.no_grad():
            for key, tensor in module.state_dict().items():
                if not key.endswith("rope.freqs"):
                    tensor.normal_(0.0, 0.02, generator=generator)
        module.to(dtype).eval()
    return SeedVRModel(dit, vae, name, variant.sampler, device=device, offload_device=torch.device("cpu"))


class PhasePeaks:
    """Peak device memory of the encode, DiT and decode phases of one upscale."""

    def __init__(self, model, device: torch.device):
        self.device, self.peaks, self.phase = device, {}, "encode"
        model.dit.register_forward_pre_hook(lambda *_: self.next("dit"))
        decode = model.vae.decode
        model.vae.decode = lambda *a, **k: (self.next("decode"), decode(*a, **k))[1]

    def next(self, phase: str) -> None:
        if phase != self.phase and phase not in self.peaks:
            self.peaks[self.phase] = peak_bytes(self.device)
            self.phase = phase
            reset_peak(self.device)

    def done(self) -> dict:
        self.peaks[self.phase] = peak_bytes(self.device)
        return self.peaks


def seedvr_peaks(sizes: Sizes, device: torch.device) -> dict:
    from comfyui_parallel.models.seedvr.pipeline import UpscaleSettings, upscale

    results = {}
    height, width = sizes.seedvr_size
    for name in sizes.seedvr:
        model = _random_seedvr(name, sizes, device)
        frames = torch.rand(sizes.seedvr_frames, height, width, 3, generator=torch.Generator().manual_seed(0))
        emb = torch.randn(16, model.dit.cfg.txt_in_dim)
        settings = UpscaleSettings(res_h=height, res_w=width, sample_steps=1, cfg_scale=model.sampler.cfg_scale)
        phases = PhasePeaks(model, device)
        reset_peak(device)
        start = time.perf_counter()
        out = upscale(model, frames, emb, emb, settings)
        seconds = time.perf_counter() - start
        peaks = phases.done()
        assert out.shape[0] == sizes.seedvr_frames and torch.isfinite(out).all()
        size = name.rsplit("_", 1)[1]
        dit, vae = peaks.get("dit", 0) / GIB, max(peaks.get("encode", 0), peaks.get("decode", 0)) / GIB
        print(f"   {name}: {seconds:.1f} s, peak DiT phase {dit:.2f} GiB, VAE phases {vae:.2f} GiB")
        what = f"{width}x{height}, {sizes.seedvr_frames} frames, one step, loader defaults (no swap, no VAE tiles)"
        results[f"seedvr_{size}_peak_gb_720p_measured"] = figure(max(dit, vae), "GiB", "lower",
                                                                 f"measured peak of {name}: {what}")
        results[f"seedvr_{size}_dit_peak_gb_720p_measured"] = figure(dit, "GiB", "lower", f"DiT phase: {what}")
        results[f"seedvr_{size}_vae_peak_gb_720p_measured"] = figure(vae, "GiB", "lower", f"VAE phases: {what}")
        results[f"seedvr_{size}_seconds_720p"] = figure(seconds, "s", "lower", f"{name} upscale: {what}")
        del model
    return results


def _sample(model, seed: int = 3):
    import comfy.sample

    generator = torch.Generator().manual_seed(seed)
    latent = torch.zeros(1, 16, 2, 8, 8)
    positive = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    negative = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, 2, 5.0, "euler", "simple", positive, negative, latent, seed=seed,
                               disable_pbar=True)


def _difference(mode: str, where: str, difference: float, device: torch.device, what: str) -> dict:
    """The figure of one mode's largest difference to plain; fails the check beyond the tolerance."""
    tolerance = 2e-2 if device.type == "cuda" else 1e-4
    print(f"   {mode} {where}: largest difference to plain {difference:.2e}")
    assert difference <= tolerance, f"{mode} differs from plain by {difference} (tolerance {tolerance})"
    return {f"mode_{mode}_max_abs_diff_one_gpu": figure(difference, "abs", "lower",
                                                        f"{mode} {where} vs plain, {what} (tolerance {tolerance})")}


def mode_equality(sizes: Sizes, device: torch.device) -> dict:
    """The largest difference to plain of data_parallel and block_distribution over `sizes.mode_devices`, and
    of distributed with one rank on `device` (NCCL on a GPU: the node asks for two ranks, one gains nothing)."""
    import comfy.model_management
    import comfy.sd
    from devtools.demo_models import tiny_wan_state_dict

    from comfyui_parallel.models.multi_gpu.patcher import MultiGPUSettings
    from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve
    from comfyui_parallel.parallel.pool import POOL

    model = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(num_layers=4, seed=2))
    expected = _sample(model)
    runs = [(mode, f"over {sizes.mode_devices}", resolve(model, MultiGPURequest(mode, sizes.mode_devices)))
            for mode in ("data_parallel", "block_distribution")]
    runs.append(("distributed", f"with one rank on {device}", MultiGPUSettings("distributed", (device,))))
    results = {}
    try:
        for mode, where, settings in runs:
            difference = (_sample(apply_multi_gpu(model, settings)) - expected).abs().max().item()
            comfy.model_management.unload_all_models()
            results.update(_difference(mode, where, difference, device, "tiny Wan, 2 euler steps"))
    finally:
        POOL.close_all()
    return results


def svd_pipeline_equality(sizes: Sizes, device: torch.device) -> dict:
    """The step pipeline with two stages over `sizes.mode_devices` (on a GPU both share it, over gloo: NCCL
    takes one rank per GPU), two videos of the tiny SVD, each equal to ComfyUI's KSampler for its seed."""
    import comfy.sample
    from devtools.tiny_svd import tiny_svd_conditioning, tiny_svd_model

    from comfyui_parallel.models.comfy.runtime import find_comfyui_dir
    from comfyui_parallel.models.step_pipeline.plan import PipelineSettings
    from comfyui_parallel.models.step_pipeline.server import run_pipeline
    from comfyui_parallel.parallel.devices import parse_gpu_ids
    from comfyui_parallel.parallel.pool import POOL

    model = tiny_svd_model(seed=0, load_device=device)
    positive, negative, latent = tiny_svd_conditioning(frames=2)
    settings = PipelineSettings(11, 4, 2.5, "euler_ancestral", "karras", num_videos=2)
    try:
        got = run_pipeline(model, positive, negative, latent, settings, parse_gpu_ids(sizes.mode_devices),
                           find_comfyui_dir()).samples
    finally:
        POOL.close_all()
    expected = torch.cat([comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), settings.steps,
                                              settings.cfg, settings.sampler_name, settings.scheduler, positive,
                                              negative, latent, seed=seed, disable_pbar=True)
                          for seed in (settings.seed, settings.seed + 1)])
    difference = (got - expected).abs().max().item()
    return _difference("svd_pipeline_2stages", f"over {sizes.mode_devices}", difference, device,
                       "tiny SVD, 2 videos, 4 euler_ancestral steps")
