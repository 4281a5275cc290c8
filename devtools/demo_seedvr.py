"""Small random-weight SeedVR models in the official formats, for tests and `make demo`.

A 2-block DiT of the 3B family (width 64, text width 32) and a 4-level VAE with the official
layout and compression (channels 32/32/64/64), saved as safetensors with the official key names;
`variant=auto` reads their sizes from the weights. Text embeddings for them (32 wide) go to
workflows/inputs/ as Load Conditioning files (`python -m devtools.demo_seedvr` rewrites them).
The same DiT also comes in Comfy-Org's repackaged layout (fp16, the official keys plus
`positive_conditioning` [58, width] and `negative_conditioning` [64, width]).
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from .pack import register_pack

REPO = Path(__file__).resolve().parents[1]
TINY_DIT = "tiny_seedvr2_dit.safetensors"
TINY_VAE = "tiny_seedvr_vae.safetensors"
POS_EMB = "seedvr_tiny_pos_emb.safetensors"
NEG_EMB = "seedvr_tiny_neg_emb.safetensors"
TINY_COMFY_ORG_DIT = "tiny_seedvr2_3b_fp16.safetensors"


def _pack():
    register_pack()
    from comfyui_parallel.models.seedvr import build, config

    return build, config


def tiny_models(seed: int = 0) -> tuple:
    """(dit, vae) of the demo sizes with deterministic random weights."""
    build, config = _pack()
    return build.small_models(config.small_dit("v2"), config.small_vae(), seed)


def _save(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def write_tiny_dit(path: Path) -> None:
    _save(tiny_models()[0], path)


def write_tiny_vae(path: Path) -> None:
    _save(tiny_models()[1], path)


def write_tiny_comfy_org_dit(path: Path, dtype: torch.dtype = torch.float16) -> None:
    """The tiny DiT as Comfy-Org repackages SeedVR2: weights in `dtype`, embeddings baked in."""
    dit = tiny_models()[0]
    state = {k: (v if k.endswith("rope.rope.freqs") else v.to(dtype)).contiguous() for k, v in dit.state_dict().items()}
    generator = torch.Generator().manual_seed(8)
    for name, count in (("positive", 58), ("negative", 64)):
        state[f"{name}_conditioning"] = torch.randn(count, dit.cfg.txt_in_dim, generator=generator).to(dtype)
    save_file(state, str(path))


def write_embeddings(folder: Path, tokens: tuple = (6, 8), width: int = 32) -> list:
    """Positive / negative `cond` files [1, tokens, width] for the tiny DiT."""
    generator = torch.Generator().manual_seed(7)
    paths = []
    for name, count in zip((POS_EMB, NEG_EMB), tokens):
        path = Path(folder) / name
        save_file({"cond": torch.randn(1, count, width, generator=generator)}, str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":
    write_embeddings(REPO / "workflows" / "inputs")
