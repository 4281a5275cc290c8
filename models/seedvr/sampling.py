"""SeedVR's diffusion: lerp schedule (T = 1000), v_lerp prediction, Euler sampler, CFG.

x_t = (1 - t/T) x_0 + (t/T) eps;  v = eps - x_0;  x_0 = x_t - (t/T) v;  eps = x_t + (1 - t/T) v.
Sampling timesteps are "uniform_trailing" (1000, 1000 - 1000/steps, ..., 1000/steps), not
resolution-shifted: the reference config leaves the sampling shift at 1.0. The resolution shift
(`timestep_transform`) only sets the noise level of the low-res conditioning latent.
"""
from typing import Callable

import torch

T = 1000.0


def sampling_timesteps(steps: int) -> torch.Tensor:
    """The reference's float32 `arange(1, 0, -1/steps) * 1000`: [1000.] for SeedVR2's one step,
    1000..20 for 50 steps. Kept as the reference computes it: for some counts (49, 98) float32
    rounding yields steps + 1 values, the last ~8e-11, and the sampler makes one more call."""
    if steps < 1:
        raise ValueError("sample_steps must be at least 1")
    return torch.arange(1.0, 0.0, -1.0 / steps, dtype=torch.float32) * T


def _lin(x1, y1, x2, y2):
    slope = (y2 - y1) / (x2 - x1)
    return lambda x: slope * x + (y1 - slope * x1)


def timestep_transform(t: float, latent_shape: tuple, vt: int = 4, vs: int = 8) -> float:
    """Resolution-dependent shift of a timestep (projects/video_diffusion_sr/infer.py).

    `latent_shape` is the (a, b, c) row the reference passes: frames = (a-1)*vt + 1,
    height = b*vs, width = c*vs; images use the (256^2 -> 1.0, 1024^2 -> 3.2) line, videos the
    (256^2*37 -> 1.0, 1280*720*145 -> 5.0) line; then u' = shift*u / (1 + (shift-1)*u).
    """
    a, b, c = latent_shape
    frames, height, width = (a - 1) * vt + 1, b * vs, c * vs
    if frames > 1:
        shift = _lin(256 * 256 * 37, 1.0, 1280 * 720 * 145, 5.0)(height * width * frames)
    else:
        shift = _lin(256 * 256, 1.0, 1024 * 1024, 3.2)(height * width)
    u = t / T
    return T * shift * u / (1 + (shift - 1) * u)


def condition_noise_timestep(cond_noise_scale: float, latent_thwc: tuple) -> float:
    """The conditioning-noise timestep, reproducing the reference call exactly.

    Quirk kept on purpose: the inference scripts pass `latent.shape[1:]` of a [T, H, W, C]
    latent, i.e. the row (H, W, C), not (T, H, W). At 720p this gives shift ~2.709 (t 100 ->
    ~231.4) instead of ~1.516. Only SeedVR v1 is affected (SeedVR2 uses scale 0, which maps to 0).
    """
    return timestep_transform(T * cond_noise_scale, tuple(latent_thwc[1:]))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """Schedule forward: (1 - t/T) x0 + (t/T) noise."""
    return (1 - t / T) * x0 + (t / T) * noise


def sr_condition(latent: torch.Tensor, aug_noise: torch.Tensor, cond_noise_scale: float) -> torch.Tensor:
    """[t, h, w, 16] low-res latent -> [t, h, w, 17] DiT condition: the latent noise-augmented at
    the conditioning timestep (SeedVR v1; scale 0 leaves it clean), then a mask channel of ones."""
    if cond_noise_scale > 0:
        latent = add_noise(latent, aug_noise, condition_noise_timestep(cond_noise_scale, tuple(latent.shape)))
    return torch.cat((latent, torch.ones_like(latent[..., :1])), dim=-1)


def cfg_combine(pos: torch.Tensor, neg: torch.Tensor | None, scale: float) -> torch.Tensor:
    """neg + scale * (pos - neg); with scale 1 the negative branch is never evaluated."""
    return pos if neg is None else neg + scale * (pos - neg)


def euler_sample(x: torch.Tensor, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 steps: int, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Euler over the trailing grid; after the last grid point it returns the x_0 estimate.

    model(x_t, t) -> v. Each step from t to s: x_s = (1 - s/T) x0_hat + (s/T) eps_hat.
    """
    timesteps = sampling_timesteps(steps)
    for i, t in enumerate(timesteps):
        v = model(x, t.reshape(1)).float()
        x0 = x.float() - (t / T) * v
        eps = x.float() + (1 - t / T) * v
        s = timesteps[i + 1] if i + 1 < len(timesteps) else torch.tensor(0.0)
        x = ((1 - s / T) * x0 + (s / T) * eps).to(x.dtype)
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x
