"""The SeedVR worker's model: after a phase on a device it points back at the shared weights (no host copy)."""
import copy
from dataclasses import asdict

import torch

from comfyui_parallel.models.seedvr import config
from comfyui_parallel.models.seedvr.multi_gpu_worker import worker_model
from comfyui_parallel.models.seedvr.vae import TileConfig
from comfyui_parallel.parallel.shared_weights import share_state_dict


def _pointers(module):
    return {name: t.data_ptr() for name, t in module.state_dict().items()}


def test_a_model_leaving_its_device_is_back_on_the_shared_weights(tiny_v2):
    dit, vae = copy.deepcopy(tiny_v2)
    shared = {"dit": share_state_dict(dit.state_dict()), "vae": share_state_dict(vae.state_dict())}
    try:
        views = {name: {key: t.data_ptr() for key, t in weights.open().items()} for name, weights in shared.items()}
        job = {**shared, "tiles": asdict(TileConfig()), "chunk_frames": vae.chunk_frames, "variant": "seedvr2_custom",
               "sampler": asdict(config.SAMPLER_V2), "blocks_to_swap": 0}
        model = worker_model(dit, vae, job, torch.device("meta"))  # "meta" stands in for a GPU
        for name, module in (("dit", model.dit), ("vae", model.vae)):
            module.to("meta")  # its phase on the device
            model.leave_device(module)
            assert _pointers(module) == views[name]
            assert all(t.device.type == "cpu" for t in module.state_dict().values())
    finally:
        for weights in shared.values():
            weights.release()

