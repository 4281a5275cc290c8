"""SeedVR over several devices, the worker's side: one WorkerGroup process per device.

`run(ctx, job)` rebuilds the DiT and the VAE once per worker from the weights the caller shared
(kept in ctx.state between prompts: zero-copy on the CPU), then runs the single-device pipeline
(pipeline.process_chunks) on this worker's share of the chunks, reporting progress and stopping at
the caller's cancel. On a GPU a model leaving the device after its phase is pointed back at the
shared weights, so a worker never holds a host copy of its own. No ComfyUI is needed here:
SeedVR is the pack's own code.
"""
import torch

from ...parallel.devices import storage_device
from .config import DiTConfig, SamplerConfig, VAEConfig
from .dit import NaDiT
from .pipeline import Hooks, SeedVRModel, UpscaleSettings, process_chunks
from .vae import TileConfig, VideoVAE

STATE_KEY = "seedvr_models"


def _assign(module: torch.nn.Module, weights) -> torch.nn.Module:
    module.load_state_dict(weights.open(), strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _models(ctx, job: dict) -> tuple:
    """(dit, vae) of the job, rebuilt only when the shared weights changed."""
    token = (job["dit"].spec()["shm_name"], job["vae"].spec()["shm_name"])
    cached = ctx.state.get(STATE_KEY)
    if cached is None or cached[0] != token:
        ctx.state.pop(STATE_KEY, None)
        with torch.device("meta"):
            dit, vae = NaDiT(DiTConfig(**job["dit_config"])), VideoVAE(VAEConfig(**job["vae_config"]))
        ctx.state[STATE_KEY] = cached = (token, _assign(dit, job["dit"]), _assign(vae, job["vae"]))
    return cached[1], cached[2]


def worker_model(dit: NaDiT, vae: VideoVAE, job: dict, device: torch.device) -> SeedVRModel:
    """The job's SeedVRModel on `device`, its models released back onto the shared weights."""
    vae.tiles, vae.chunk_frames = TileConfig(**job["tiles"]), job["chunk_frames"]
    shared = {id(dit): job["dit"], id(vae): job["vae"]}
    return SeedVRModel(dit, vae, job["variant"], SamplerConfig(**job["sampler"]), device=device,
                       offload_device=torch.device("cpu"), blocks_to_swap=job["blocks_to_swap"],
                       release=lambda module: _assign(module, shared[id(module)]))


def run(ctx, job: dict) -> dict:
    """Restore this rank's chunks; returns their indices and decoded frames, in order."""
    share = ctx.rank_arg
    if not share["indices"]:
        return {"indices": [], "parts": []}
    model = worker_model(*_models(ctx, job), job, storage_device(ctx.device))
    hooks = Hooks(progress=ctx.progress, check_cancel=ctx.check_cancelled)
    parts = process_chunks(model, share["clips"], share["indices"], job["pos"], job["neg"],
                           UpscaleSettings(**job["settings"]), hooks)
    return {"indices": share["indices"], "parts": parts}
