"""bench_seedvr's LiveBytes: the traced peak counts what a run allocates while alive, not views or weights."""
import sys

import torch

from devtools.comfy_server import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_seedvr  # noqa: E402


def test_live_bytes_counts_allocations_once_and_their_frees():
    weight = torch.empty(1000, device="meta")  # made before the mode: not counted
    with bench_seedvr.LiveBytes() as live:
        a = weight * 2  # 4000 bytes
        view = a[:10]  # shares a's storage: nothing new
        weight.t()
        b = view + 1  # 40 bytes
        del a
        assert live.live == 4040  # a's storage lives on in the view
        del view
        assert live.live == 40
        a = torch.empty(250, device="meta")  # 1000 bytes, after a free: the peak stays
        a.add_(1)  # in place: nothing new
    assert (live.live, live.peak) == (1040, 4040)
    assert b.shape == (10,)


def test_a_meta_run_of_the_small_dit_traces_its_activations():
    from comfyui_parallel.models.seedvr.build import meta_dit

    dit = meta_dit("seedvr2_3b").to(torch.bfloat16)
    dit.blocks = dit.blocks[:2]
    one, three = (bench_seedvr.dit_activation_bytes(dit, frames) for frames in (1, 3))
    tokens = 45 * 80  # one latent frame of 720p: a block holds at least its input and output
    assert 2 * tokens * dit.cfg.vid_dim * 2 < one < three
