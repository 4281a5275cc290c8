"""SeedVR model configurations: the official 3B / 7B DiTs and the causal video VAE.

The numbers come from the public ByteDance-Seed/SeedVR configs (configs_3b/main.yaml,
configs_7b/main.yaml, models/video_vae_v3/s8_c16_t4_inflation_sd3.yaml); see
tests/data/seedvr/NOTES.md. Small configs of the same shape families are used by tests and the demo.
"""
from dataclasses import dataclass, field, replace

VARIANTS = ("seedvr_3b", "seedvr_7b", "seedvr2_3b", "seedvr2_7b")


@dataclass(frozen=True)
class DiTConfig:
    """NaDiT hyper-parameters.

    family "v2" is the 3B code tree (models/dit_v2: SwiGLU, shared `.all.` weights after
    `mm_layers`, joint video+text rotary, output norm + output modulation); family "v1" is the
    7B tree (models/dit: GELU MLP, separate weights everywhere, video-only pixel rotary).
    """

    family: str = "v2"
    vid_dim: int = 2560
    txt_in_dim: int = 5120
    heads: int = 20
    head_dim: int = 128
    num_layers: int = 32
    mm_layers: int = 10
    expand_ratio: int = 4
    in_channels: int = 33
    out_channels: int = 16
    patch_size: tuple = (1, 2, 2)
    window: tuple = (4, 3, 3)
    norm_eps: float = 1e-5

    @property
    def emb_dim(self) -> int:
        return 6 * self.vid_dim

    @property
    def swiglu(self) -> bool:
        return self.family == "v2"

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU: 256 * ceil(int(2 * dim * ratio / 3) / 256) (6912 at 2560); GELU: dim * ratio."""
        if not self.swiglu:
            return self.vid_dim * self.expand_ratio
        hidden = int(2 * self.vid_dim * self.expand_ratio / 3)
        return 256 * ((hidden + 255) // 256)

    @property
    def rope_axis_dim(self) -> int:
        """Rotary dims per axis: head_dim // 3 (3B, rope_dim = head_dim) or (head_dim // 2) // 3 (7B)."""
        return self.head_dim // 3 if self.family == "v2" else (self.head_dim // 2) // 3

    def shared(self, index: int) -> bool:
        """Whether block `index` shares one weight set (`.all.`) between video and text."""
        return self.family == "v2" and index >= self.mm_layers


DIT_3B = DiTConfig()
DIT_7B = DiTConfig(family="v1", vid_dim=3072, heads=24, num_layers=36, mm_layers=36)


@dataclass(frozen=True)
class VAEConfig:
    """Causal 3D VAE: 8x spatial, 4x temporal compression, 16 latent channels."""

    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    in_channels: int = 3
    norm_groups: int = 32
    temporal_scale_num: int = 2
    scaling_factor: float = 0.9152
    shifting_factor: float = 0.0

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** self.temporal_scale_num


VAE_FULL = VAEConfig()


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling defaults of the official inference scripts (projects/inference_seedvr*_*.py)."""

    steps: int = 50
    cfg_scale: float = 6.5
    cond_noise_scale: float = 0.1
    seed: int = 666


SAMPLER_V1 = SamplerConfig()
SAMPLER_V2 = SamplerConfig(steps=1, cfg_scale=1.0, cond_noise_scale=0.0)


@dataclass(frozen=True)
class Variant:
    """A named official model: its DiT config and its sampler defaults."""

    name: str
    dit: DiTConfig
    sampler: SamplerConfig = field(default=SAMPLER_V2)


def variant(name: str) -> Variant:
    """The official variant called `name` (one of VARIANTS)."""
    dit = DIT_3B if name.endswith("3b") else DIT_7B
    sampler = SAMPLER_V2 if name.startswith("seedvr2") else SAMPLER_V1
    return Variant(name, dit, sampler)


def small_dit(family: str = "v2", **overrides) -> DiTConfig:
    """A tiny DiT of the given family for tests and the demo (2 blocks, width 64)."""
    base = DiTConfig(family=family, vid_dim=64, txt_in_dim=32, heads=2, head_dim=32,
                     num_layers=2, mm_layers=1 if family == "v2" else 2)
    return replace(base, **overrides)


def small_vae(**overrides) -> VAEConfig:
    """A tiny VAE with the official layout (same compression, fewer channels)."""
    return replace(VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1), **overrides)
