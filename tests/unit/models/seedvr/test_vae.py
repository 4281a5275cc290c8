"""Causal video VAE: compression, causality, chunked == one pass, tiling, frame-count errors."""
import pytest
import torch
import torch.nn.functional as F

from comfyui_parallel.models.seedvr.vae import TileConfig, tiled
from comfyui_parallel.utils.errors import InputError


def _video(frames, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, frames, h // 8, w // 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(frames, h, w), mode="trilinear")


@pytest.fixture
def vae(tiny_v2):
    vae = tiny_v2[1]
    vae.tiles, vae.chunk_frames = TileConfig(), 4
    return vae


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3), (13, 4)])
def test_compression_8x_spatial_4x_temporal(vae, frames, latent_frames):
    with torch.no_grad():
        latent = vae.encode(_video(frames), sample=False)
        assert latent.shape == (1, 16, latent_frames, 4, 6)
        assert vae.decode(latent).shape == (1, 3, frames, 32, 48)


@pytest.mark.parametrize("frames", [2, 4, 6, 8])
def test_frame_counts_not_4n_plus_1_are_refused(vae, frames):
    with pytest.raises(InputError, match="4n\\+1"):
        vae.encode(_video(frames), sample=False)


def test_encoder_is_causal(vae):
    """Changing later frames leaves the latents of earlier frames unchanged."""
    video = _video(9)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    with torch.no_grad():
        a, b = vae.encode(video, sample=False), vae.encode(changed, sample=False)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2:], b[:, :, 2:])


def test_chunked_encode_and_decode_equal_one_pass(vae):
    video = _video(13)
    with torch.no_grad():
        vae.chunk_frames = 100
        one_latent = vae.encode(video, sample=False)
        one_video = vae.decode(one_latent)
        vae.chunk_frames = 4
        chunk_latent = vae.encode(video, sample=False)
        chunk_video = vae.decode(one_latent)
    torch.testing.assert_close(chunk_latent, one_latent, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunk_video, one_video, atol=1e-5, rtol=1e-4)


def test_posterior_sample_is_seeded_and_scaled(vae):
    video = _video(1)
    with torch.no_grad():
        a = vae.encode(video, generator=torch.Generator().manual_seed(1))
        b = vae.encode(video, generator=torch.Generator().manual_seed(1))
        mean = vae.encode(video, sample=False)
    assert torch.equal(a, b) and not torch.equal(a, mean)


def test_tiling_blend_is_exact_for_local_operators():
    """Overlapping tiles blend to a partition of unity: a local operator is reproduced exactly."""
    x = torch.rand(1, 3, 2, 96, 136)
    down = lambda t: F.avg_pool3d(t, (1, 8, 8))
    up = lambda t: F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest")
    torch.testing.assert_close(tiled(down, x, 48, 16, 1 / 8), down(x))
    z = torch.rand(1, 16, 2, 12, 17)
    torch.testing.assert_close(tiled(up, z, 6, 2, 8), up(z))


def test_tiled_vae_close_to_untiled(vae):
    """Tiles see less context (per-frame GroupNorm statistics, mid-block attention, zero padding
    at tile borders), so tiled output differs; on the random small VAE it stays strongly correlated."""
    video = _video(1, 64, 64)
    with torch.no_grad():
        latent = vae.encode(video, sample=False)
        full = vae.decode(latent)
        vae.tiles = TileConfig(48, 16)
        tiled_latent = vae.encode(video, sample=False)
        tiled_video = vae.decode(latent)
    cos = lambda a, b: F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert tiled_latent.shape == latent.shape and tiled_video.shape == full.shape
    assert cos(tiled_latent, latent) > 0.9
    assert cos(tiled_video, full) > 0.9
