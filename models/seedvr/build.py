"""Construct SeedVR models: full size on the meta device (no memory), or small with random weights."""
import torch

from .config import VAE_FULL, DiTConfig, VAEConfig, variant
from .dit import NaDiT
from .vae import VideoVAE


def meta_dit(name: str) -> NaDiT:
    """The official DiT of variant `name` on the meta device (float32, its construction dtype)."""
    with torch.device("meta"):
        return NaDiT(variant(name).dit)


def meta_vae(cfg: VAEConfig = VAE_FULL) -> VideoVAE:
    with torch.device("meta"):
        return VideoVAE(cfg)


def random_init_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Deterministic random weights for small test / demo models (keeps norm weights near 1,
    modulation scales near 1 and rotary frequency buffers untouched)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if name.endswith("rope.freqs"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            near_one = name.endswith("_scale") or ("norm" in name and name.endswith("weight"))
            tensor.copy_(1.0 + 0.1 * noise if near_one else scale * noise)
    return module


def small_models(dit_cfg: DiTConfig, vae_cfg: VAEConfig, seed: int = 0) -> tuple:
    """(NaDiT, VideoVAE) with deterministic random weights, float32, in eval mode."""
    dit = random_init_(NaDiT(dit_cfg), seed).eval()
    vae = random_init_(VideoVAE(vae_cfg), seed + 1, scale=0.08).eval()
    return dit, vae
