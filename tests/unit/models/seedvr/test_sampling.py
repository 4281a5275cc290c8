"""Schedule, sampler, CFG and the reference timestep shift (numbers from NOTES.md)."""
import pytest
import torch

from comfyui_parallel.models.seedvr.sampling import (add_noise, cfg_combine, condition_noise_timestep,
                                                     euler_sample, sampling_timesteps, timestep_transform)


def test_trailing_grid():
    assert sampling_timesteps(1).tolist() == [1000.0]
    grid = sampling_timesteps(50)
    assert len(grid) == 50 and grid[0] == 1000.0 and grid[1] == 980.0 and grid[-1] == 20.0


def test_timestep_shift_numbers_from_reference():
    """720x1280: the reference passes (H, W, C) = (90, 160, 16): t 100 -> ~231.4 (shift ~2.709);
    with (T, H, W) = (6, 90, 160) it would be ~144.2."""
    assert condition_noise_timestep(0.1, (6, 90, 160, 16)) == pytest.approx(231.4, abs=0.05)
    assert timestep_transform(100.0, (6, 90, 160)) == pytest.approx(144.2, abs=0.05)
    assert condition_noise_timestep(0.0, (6, 90, 160, 16)) == 0.0
    assert timestep_transform(1000.0, (1, 128, 128)) == pytest.approx(1000.0)


def test_euler_with_exact_velocity_recovers_x0():
    """v = eps - x0 for the true eps and x0: every step lands on the schedule; the end is x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 16, generator=g), torch.randn(2, 4, 4, 16, generator=g)
    seen = []
    for steps in (1, 5):
        out = euler_sample(eps.clone(), lambda x, t: eps - x0, steps, on_step=lambda d, n: seen.append((d, n)))
        torch.testing.assert_close(out, x0)
    assert seen[-1] == (5, 5)
    torch.testing.assert_close(add_noise(x0, eps, 1000.0), eps)


def test_one_step_is_x_minus_v():
    x, v = torch.randn(3, 2, 2, 16), torch.randn(3, 2, 2, 16)
    torch.testing.assert_close(euler_sample(x, lambda *_: v, 1), x - v)


def test_cfg_formula():
    pos, neg = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(pos, neg, 6.5).item() == pytest.approx(1.0 + 6.5 * 1.0)
    assert cfg_combine(pos, None, 1.0).item() == 2.0
