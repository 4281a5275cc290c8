"""SeedVR over several devices with real gloo worker processes: equal to one device, progress, cancel."""
import dataclasses

import psutil
import pytest
import torch

from comfyui_parallel.models.seedvr import config
from comfyui_parallel.models.seedvr.multi_gpu_server import FEATURE, pool_key, share_chunks, upscale_multi
from comfyui_parallel.models.seedvr.pipeline import SeedVRModel, UpscaleSettings, upscale
from comfyui_parallel.parallel.devices import parse_gpu_ids
from comfyui_parallel.parallel.pool import POOL
from comfyui_parallel.utils.errors import Cancelled

SETTINGS = UpscaleSettings(res_h=32, res_w=48, cfg_scale=2.0, sample_steps=2, seed=3, batch_size=5,
                           temporal_overlap=2)
DEVICES = parse_gpu_ids("cpu,cpu")


@pytest.fixture(scope="module")
def model(tiny_v2):
    yield SeedVRModel(tiny_v2[0], tiny_v2[1], "seedvr_custom", config.SAMPLER_V1)
    POOL.close_feature(FEATURE)


def _frames(n):
    return torch.rand(n, 20, 30, 3, generator=torch.Generator().manual_seed(n))


def _emb(tokens, seed):
    return torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed))


def _both(model, frames, settings=SETTINGS, **kwargs):
    torch.set_num_threads(1)
    single = upscale(model, frames, _emb(4, 1), _emb(6, 2), settings)
    multi = upscale_multi(model, frames, _emb(4, 1), _emb(6, 2), settings, DEVICES, "", **kwargs)
    return single, multi


def test_chunks_are_shared_contiguously():
    assert share_chunks(5, 2) == [[0, 1], [2, 3, 4]]
    assert share_chunks(1, 2) == [[], [0]]
    assert sum(share_chunks(7, 3), []) == list(range(7))


def test_two_workers_equal_one_device_exactly_with_overlap_blend_and_progress(model):
    seen = []
    single, multi = _both(model, _frames(11), on_progress=lambda done, total: seen.append((done, total)))
    assert multi.shape == single.shape == (11, 32, 48, 3)
    assert torch.equal(multi, single)
    assert seen[-1] == (2 * 3, 2 * 3)  # 3 chunks (11 frames, 5 per chunk, overlap 2) x 2 steps, over both workers
    assert len(POOL.pids(FEATURE)) == 2


def test_the_servers_weights_are_the_shared_copy_the_workers_read(model):
    """One copy on the machine while the workers are kept: the server's DiT and VAE compute from it too."""
    single, multi = _both(model, _frames(6))
    key = pool_key(DEVICES, "")
    for owner, module in (("dit", model.dit), ("vae", model.vae)):
        shared = POOL.weights_of(key, owner).open()
        held = dict(module.state_dict())
        assert shared.keys() == held.keys() and all(held[n].data_ptr() == shared[n].data_ptr() for n in held), owner
    assert torch.equal(multi, single) and torch.equal(upscale(model, _frames(6), _emb(4, 1), _emb(6, 2), SETTINGS),
                                                      single)


def test_fewer_chunks_than_workers_and_block_swap_in_the_workers(model):
    single, multi = _both(model, _frames(1))
    assert torch.equal(multi, single)
    model.blocks_to_swap = 1
    try:
        single, multi = _both(model, _frames(6), dataclasses.replace(SETTINGS, temporal_overlap=0, cfg_scale=1.0))
    finally:
        model.blocks_to_swap = 0
    assert torch.equal(multi, single)


def test_cancel_stops_every_worker_and_the_group_stays_usable(model):
    upscale_multi(model, _frames(1), _emb(4, 1), _emb(6, 2), SETTINGS, DEVICES, "")
    pids = POOL.pids(FEATURE)
    progressed = []
    with pytest.raises(Cancelled):
        upscale_multi(model, _frames(11), _emb(4, 1), _emb(6, 2), dataclasses.replace(SETTINGS, sample_steps=20),
                      DEVICES, "", on_progress=lambda done, total: progressed.append(done),
                      should_cancel=lambda: bool(progressed))
    assert progressed and progressed[-1] < 20 * 3
    single, multi = _both(model, _frames(1))
    assert torch.equal(multi, single)
    assert POOL.pids(FEATURE) == pids and len(pids) == 2  # the same workers served the next call


def test_closing_the_pool_ends_the_workers(model):
    upscale_multi(model, _frames(1), _emb(4, 1), _emb(6, 2), SETTINGS, DEVICES, "")
    pids = POOL.pids(FEATURE)
    assert pids and pool_key(DEVICES, "") in POOL
    POOL.close_feature(FEATURE)
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    assert not alive
