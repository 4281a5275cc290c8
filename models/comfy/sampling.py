"""ComfyUI's sampling as the pack drives it: KSampler's pieces, and a piece of a sampler call.

The step pipeline runs steps [start, end) of one KSamplerAdvanced call's sigma vector
(`sigmas[start:end + 1]`, noise added with the seed only at the call's first step) through
ComfyUI's CFGGuider (`comfy.samplers.sample`) and its k-diffusion sampler functions.
`StageSampler` is ComfyUI's KSAMPLER with two changes that make chained pieces bit-identical to
the one call: the latent travels in the sampler's own space (before `process_latent_out`),
and per-step noise continues where the previous piece stopped (the seeded generator's state,
or a Brownian tree over the call's whole sigma vector). What a piece runs is described by a
`step_pipeline.stage.StageJob` (start, end, first, last, sigmas, seed, sampler_name, cfg, add_noise).
"""
import inspect

import torch

from .runtime import ensure_comfy

ensure_comfy()
import comfy.k_diffusion.sampling as k_sampling  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

SAMPLERS = comfy.samplers.KSampler.SAMPLERS
SCHEDULERS = comfy.samplers.KSampler.SCHEDULERS
prepare_noise = comfy.sample.prepare_noise
fix_empty_latent_channels = comfy.sample.fix_empty_latent_channels
sample = comfy.sample.sample

# Checked against full KSampler runs (tests/integration/test_svd_pipeline.py): exact at any split.
STATELESS_SAMPLERS = ("euler", "euler_cfg_pp", "heun", "dpm_2", "ddim")
GENERATOR_NOISE_SAMPLERS = ("euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
                            "dpmpp_2s_ancestral_cfg_pp", "ddpm", "lcm", "seeds_2", "seeds_3")
BROWNIAN_NOISE_SAMPLERS = ("dpmpp_sde", "dpmpp_sde_gpu")


class CarriedNoise:
    """ComfyUI's default_noise_sampler, with the generator state handed from stage to stage."""

    def __init__(self, x: torch.Tensor, seed: int, state: torch.Tensor | None):
        self.x = x
        self.generator = torch.Generator(device=x.device)
        self.generator.manual_seed(seed)
        if state is not None and state.numel():
            self.generator.set_state(state.cpu())

    def __call__(self, sigma, sigma_next):
        x = self.x
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=self.generator)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()


class StageSampler(comfy.samplers.KSAMPLER):
    """KSAMPLER.sample for a part of the schedule: starts from a carried x, returns the raw x."""

    def __init__(self, job, carry: dict | None):
        base = comfy.samplers.sampler_object(job.sampler_name)
        super().__init__(base.sampler_function, dict(base.extra_options), base.inpaint_options)
        self.job = job
        self.carry_in = carry or {}
        self.carry_out: dict = {}

    def noise_sampler(self, x: torch.Tensor):
        """The per-step noise source continuing the full run's (None: the sampler draws none)."""
        name, job = self.job.sampler_name, self.job
        if name in BROWNIAN_NOISE_SAMPLERS:
            positive = job.sigmas[job.sigmas > 0]
            return k_sampling.BrownianTreeNoiseSampler(x, positive.min(), job.sigmas.max(), seed=job.seed,
                                                       cpu=not name.endswith("_gpu"))
        if name in GENERATOR_NOISE_SAMPLERS:
            return CarriedNoise(x, job.seed, self.carry_in.get("rng"))
        return None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        if self.inpaint_options.get("random", False):  # ddim, as KSAMPLER.sample does
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            model_k.noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
        model_sampling = model_wrap.inner_model.model_sampling
        if self.job.first:
            x = model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        else:
            x = self.carry_in["x"].to(device=noise.device, dtype=noise.dtype)
        options = dict(self.extra_options)
        noise_sampler = self.noise_sampler(x)
        if noise_sampler is not None and "noise_sampler" in inspect.signature(self.sampler_function).parameters:
            options["noise_sampler"] = noise_sampler
        k_callback = None
        if callback is not None:
            k_callback = lambda step: callback(step["i"], step["denoised"], step["x"], len(sigmas) - 1)
        samples = self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **options)
        self.carry_out = {"x": samples.detach().to("cpu", torch.float32)}
        if isinstance(noise_sampler, CarriedNoise):
            self.carry_out["rng"] = noise_sampler.state()
        if self.job.last:
            samples = model_sampling.inverse_noise_scaling(sigmas[-1], samples)
        return samples


def schedule_sigmas(model, steps: int, sampler_name: str, scheduler: str) -> torch.Tensor:
    """The sigma schedule KSampler uses for these settings (denoise 1.0), on the CPU."""
    sampler = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler,
                                      denoise=1.0, model_options=model.model_options)
    return sampler.sigmas.cpu()


def run_stage(model, positive, negative, latent_image: torch.Tensor, job, carry: dict | None,
              callback=None, denoise_mask: torch.Tensor | None = None) -> dict:
    """Run steps [job.start, job.end) of one sampler call for one video; return the carry for the next piece.

    The call's first piece starts from `latent_image`, or from the previous call's "samples" in
    `carry` (the second KSamplerAdvanced of a pair), with the seed's noise or zeros (add_noise).
    Later pieces continue from the carried x; a handed-over latent travels with it ("latent"), as
    KSamplerX0Inpaint blends a noise mask against the call's latent. The last piece's carry holds "samples":
    the latent KSamplerAdvanced returns for this seed.
    """
    carry = carry or {}
    handed = carry.get("latent", carry.get("samples"))
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image if handed is None else handed)
    if job.add_noise:
        noise = comfy.sample.prepare_noise(latent_image, job.seed)
    else:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout)
    sampler = StageSampler(job, carry)
    samples = comfy.samplers.sample(model, noise, positive, negative, job.cfg, model.load_device, sampler,
                                    job.sigmas[job.start:job.end + 1], model_options=model.model_options,
                                    latent_image=latent_image, denoise_mask=denoise_mask, callback=callback,
                                    disable_pbar=True, seed=job.seed)
    if job.last:
        return {"samples": samples.to("cpu")}
    if handed is not None:
        return {**sampler.carry_out, "latent": handed}
    return sampler.carry_out
