"""Shared by the Multi-GPU integration tests: the tiny Wan, fixed conditioning, one KSampler-equivalent run,
and a spy recording every Module.to call with the module's name in the model."""
import contextlib
from pathlib import Path

import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()

import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402

TINY_WAN = "tiny_wan_t2v.safetensors"
LATENT_SHAPE = (1, 16, 2, 8, 8)  # EmptyHunyuanLatentVideo 64 x 64, 5 frames


def load_tiny_wan(models_cache: Path, dtype=None):
    """A fresh ModelPatcher of the tiny Wan, loaded by ComfyUI's own loader."""
    options = {"dtype": dtype} if dtype is not None else {}
    return comfy.sd.load_diffusion_model(str(models_cache / "diffusion_models" / TINY_WAN), model_options=options)


def load_wan_layers(num_layers: int, seed: int = 0):
    """A fresh tiny Wan with more blocks (so the planner spreads them), through ComfyUI's loader."""
    from devtools.demo_models import tiny_wan_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(num_layers=num_layers, seed=seed))


def conditioning(seed: int = 5, tokens: int = 8):
    """Positive and negative CONDITIONING as LoadConditioningFile gives them ([1, tokens, 4096])."""
    generator = torch.Generator().manual_seed(seed)
    positive = [[torch.randn(1, tokens, 4096, generator=generator), {}]]
    negative = [[torch.randn(1, tokens, 4096, generator=generator), {}]]
    return positive, negative


def sample(model, seed: int = 42, steps: int = 3, cfg: float = 5.0, latent_shape=LATENT_SHAPE, conds=None,
           latent=None, noise_mask=None) -> torch.Tensor:
    """What KSampler does (euler / simple, denoise 1) through ComfyUI's sampling and model management.

    conds: (positive, negative), default `conditioning()`; latent: the LATENT's samples (default zeros of
    latent_shape); noise_mask: the LATENT's noise_mask (Wan 2.2 TI2V's start image).
    """
    positive, negative = conds if conds is not None else conditioning()
    latent = torch.zeros(latent_shape) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               noise_mask=noise_mask, seed=seed, disable_pbar=True)


@contextlib.contextmanager
def runner_closed(model):
    """A Multi-GPU MODEL whose replicas or workers are let go of when the block ends."""
    from comfyui_parallel.models.multi_gpu.wrappers import runner_of

    try:
        yield model
    finally:
        runner = runner_of(model)
        if runner is not None:
            runner.close()


class MoveSpy(contextlib.AbstractContextManager):
    """Records (module name, target device) for every nn.Module.to call on modules of one model."""

    def __init__(self, root: torch.nn.Module):
        self.names = {id(m): name for name, m in root.named_modules()}
        self.moves: list[tuple[str, str]] = []
        self._original = torch.nn.Module.to

    def __enter__(self):
        spy = self

        def recording_to(module, *args, **kwargs):
            name = spy.names.get(id(module))
            device = kwargs.get("device", args[0] if args else None)
            if name is not None and isinstance(device, (str, torch.device)):
                spy.moves.append((name, str(torch.device(device))))
            return spy._original(module, *args, **kwargs)

        torch.nn.Module.to = recording_to
        return self

    def __exit__(self, *exc):
        torch.nn.Module.to = self._original

    def moves_touching(self, prefix: str) -> list[str]:
        """Devices of every move that moved the module at `prefix`: calls on it, inside it, or on an ancestor."""
        touched = []
        for name, device in self.moves:
            inside = name == prefix or name.startswith(prefix + ".")
            ancestor = name == "" or prefix.startswith(name + ".")
            if inside or ancestor:
                touched.append((name, device))
        return touched
