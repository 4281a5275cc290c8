"""SeedVR over several devices, the caller's side: frame chunks spread over one worker per device.

Runs in ComfyUI's server (or a test). The chunks of one upscale are independent (each draws its
noise from seed + its index), so the DiT's and the VAE's weights go once into shared memory (the
server's CPU weights become views of it: one copy on this machine), the
worker group of these devices (kept in the pack's pool between prompts) gets a contiguous share of
the chunks per worker (multi_gpu_worker.py), each worker runs the single-device pipeline on its
share, and the decoded chunks come back to be merged here with the same temporal-overlap blend.
The result equals the single-device result for the same chunking (exactly on the CPU).
Progress counts the model calls of every chunk over all workers; ComfyUI's cancel stops them all
(the group stays usable); after a failure the group is closed and the next prompt starts afresh.
"""
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ...parallel.devices import storage_device
from ...parallel.pool import POOL
from ...parallel.shared_weights import move_into
from ...utils.errors import Cancelled
from ..comfy.patcher import weights_identity
from ..comfy.workers import group_config
from .pipeline import SeedVRModel, UpscaleSettings, merge, prepare
from .sampling import sampling_timesteps

WORKER_FN = "models.seedvr.multi_gpu_worker:run"
FEATURE = "seedvr"


def pool_key(devices: list[torch.device], comfyui_dir) -> tuple:
    """The pool key of the SeedVR workers for these devices and this ComfyUI."""
    names = tuple(str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices)
    return (FEATURE, names, str(comfyui_dir))


def share_chunks(count: int, workers: int) -> list[list[int]]:
    """Chunk indices per worker: contiguous, sizes differing by at most one (a worker may get none)."""
    return [list(range(rank * count // workers, (rank + 1) * count // workers)) for rank in range(workers)]


def _share(model: torch.nn.Module, key: tuple, owner: str):
    """The module's weights in the pool's shared copy for `key`; its CPU tensors become views of that copy
    (one copy on this machine while the workers are kept, not the server's plus the shared one)."""
    weights = POOL.shared(key, owner, weights_identity(model), model.state_dict)
    move_into(model, weights)
    return weights


def _job(model: SeedVRModel, key: tuple, prepared, settings: UpscaleSettings) -> dict:
    dit_weights, vae_weights = _share(model.dit, key, "dit"), _share(model.vae, key, "vae")
    return {"dit_config": asdict(model.dit.cfg), "vae_config": asdict(model.vae.cfg),
            "dit": dit_weights, "vae": vae_weights, "variant": model.variant, "sampler": asdict(model.sampler),
            "blocks_to_swap": model.blocks_to_swap, "tiles": asdict(model.vae.tiles),
            "chunk_frames": model.vae.chunk_frames, "settings": asdict(settings),
            "pos": prepared.pos, "neg": prepared.neg}


def upscale_multi(model: SeedVRModel, images: torch.Tensor, pos: torch.Tensor | None, neg: torch.Tensor | None,
                  settings: UpscaleSettings, devices: list[torch.device], comfyui_dir: str | Path,
                  on_progress: Callable[[int, int], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """`pipeline.upscale` with the chunks spread over one worker per device (IMAGE [N, h, w, 3])."""
    prepared = prepare(model, images, pos, neg, settings)
    key = pool_key(devices, comfyui_dir)
    for other in POOL.keys(FEATURE):  # one shared SeedVR at a time
        if other != key:
            POOL.close(other)
    group = POOL.group(key, group_config(key[1], key[2]))
    shares = share_chunks(len(prepared.chunks), len(devices))
    per_rank = [{"indices": share, "clips": prepared.clips(share)} for share in shares]
    total = len(sampling_timesteps(settings.sample_steps)) * len(prepared.chunks)
    done = [0] * len(devices)

    def progress(rank, value, _total):
        done[rank] = value
        if on_progress is not None:
            on_progress(sum(done), total)

    try:
        results = group.call(WORKER_FN, _job(model, key, prepared, settings), per_rank=per_rank,
                             on_progress=progress, should_cancel=should_cancel)
    except Cancelled:
        raise  # the workers share no collective: each stopped at its next check, the group stays usable
    except BaseException:
        POOL.close(key)  # a crashed or failed worker: start afresh next time
        raise
    parts = [part for result in results for part in result["parts"]]  # rank order = chunk order
    return merge(parts, prepared)
