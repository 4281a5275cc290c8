"""NaDiT: shapes, determinism, windows, rotary frequencies, weight sharing, output head."""
import math

import pytest
import torch

from comfyui_parallel.models.seedvr import build, config
from comfyui_parallel.models.seedvr.dit import NaDiT, emb_slot
from comfyui_parallel.models.seedvr.rope import MMRope3d, PixelRope3d
from comfyui_parallel.models.seedvr.window import group_windows, make_windows, window_shape, window_sizes


def _inputs(t=2, h=8, w=12, tokens=5, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, h, w, 33, generator=g), torch.randn(tokens, width, generator=g)


@pytest.mark.parametrize("family", ["v2", "v1"])
def test_forward_shape_and_determinism(family, tiny_v2, tiny_v1):
    dit = (tiny_v2 if family == "v2" else tiny_v1)[0]
    vid, txt = _inputs()
    with torch.no_grad():
        a = dit(vid, txt, torch.tensor([500.0]))
        b = dit(vid, txt, torch.tensor([500.0]))
    assert a.shape == (2, 8, 12, 16)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_output_depends_on_text_and_timestep(tiny_v2):
    dit = tiny_v2[0]
    vid, txt = _inputs()
    with torch.no_grad():
        base = dit(vid, txt, torch.tensor([500.0]))
        other_t = dit(vid, txt, torch.tensor([100.0]))
        other_txt = dit(vid, txt + 1.0, torch.tensor([500.0]))
        longer_txt = dit(vid, torch.cat((txt, txt[:2])), torch.tensor([500.0]))
    for other in (other_t, other_txt, longer_txt):
        assert not torch.allclose(base, other)


def test_weight_sharing_layout_of_small_3b_family(tiny_v2):
    keys = tiny_v2[0].state_dict().keys()
    assert "blocks.0.attn.proj_qkv.vid.weight" in keys and "blocks.0.attn.proj_qkv.txt.weight" in keys
    assert "blocks.1.attn.proj_qkv.all.weight" in keys and "blocks.1.attn.proj_qkv.vid.weight" not in keys
    assert "vid_out_norm.weight" in keys and "vid_out_ada.out_scale" in keys and "vid_out_ada.out_gate" not in keys


def test_output_head_reads_attention_slot_of_time_embedding(tiny_v2):
    """Reference quirk: the 3B head uses the blocks' attention-slot shift/scale (slot 0 of 2)."""
    emb = torch.arange(12.0).reshape(1, 12)  # dim 2, layers 2, (shift, scale, gate)
    slot = emb_slot(emb, 0)
    assert slot.shape == (1, 2, 3)
    assert slot[0, :, 0].tolist() == [0.0, 6.0] and slot[0, :, 1].tolist() == [1.0, 7.0]


def test_720p_window_example_from_notes():
    """720x1280, 21 frames -> tokens (6, 45, 80) -> window (2, 15, 27) -> 3x3x3 windows."""
    assert window_sizes((6, 45, 80), (4, 3, 3)) == (2, 15, 27)
    assert len(make_windows((6, 45, 80), (4, 3, 3), shifted=False)) == 27


@pytest.mark.parametrize("grid", [(6, 45, 80), (1, 4, 6), (3, 17, 9), (8, 30, 52)])
@pytest.mark.parametrize("shifted", [False, True])
def test_windows_cover_every_token_once(grid, shifted):
    hits = torch.zeros(grid, dtype=torch.int32)
    for window in make_windows(grid, (4, 3, 3), shifted):
        hits[window] += 1
    assert torch.all(hits == 1)


def test_shifted_windows_are_offset_by_half_a_window():
    windows = make_windows((6, 45, 80), (4, 3, 3), shifted=True)
    first = windows[0]
    assert (first[0].stop, first[1].stop, first[2].stop) == (1, 7, 13)
    assert len(windows) == 4 * 4 * 4


def test_rotary_frequencies_match_reference_buffers():
    three_b = MMRope3d(config.DIT_3B.rope_axis_dim).rope.freqs
    seven_b = PixelRope3d(config.DIT_7B.rope_axis_dim).rope.freqs
    assert three_b.shape == (21,) and seven_b.shape == (10,)
    j = torch.arange(21, dtype=torch.float32)
    torch.testing.assert_close(three_b, 10000 ** (-2 * j / 42))
    torch.testing.assert_close(seven_b, torch.linspace(1, 128, 10) * math.pi)


def test_rotary_leaves_tail_dims_and_norm_unchanged():
    rope = MMRope3d(42)
    angles = rope.video_angles((2, 3, 4), text_len=5)
    assert angles.shape == (24, 126)
    from comfyui_parallel.models.seedvr.rope import rotate_interleaved

    x = torch.randn(24, 2, 128)
    y = rotate_interleaved(x, angles)
    assert torch.equal(y[..., 126:], x[..., 126:])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_full_size_blocks_have_reference_parameter_counts():
    dit = build.meta_dit("seedvr_3b")
    assert isinstance(dit, NaDiT) and len(dit.blocks) == 32
    assert build.meta_dit("seedvr_7b").cfg.mlp_hidden == 12288 and dit.cfg.mlp_hidden == 6912


@pytest.mark.parametrize("name", ["seedvr2_3b", "seedvr_7b"])
def test_full_size_forward_shapes_on_meta_device(name):
    """The official configs (head_dim 128, rotary 42 / 21 dims per axis) run end to end on meta."""
    dit = build.meta_dit(name)
    with torch.device("meta"), torch.no_grad():
        out = dit(torch.empty(2, 16, 24, 33), torch.empty(58, 5120), torch.tensor([1000.0]))
    assert out.shape == (2, 16, 24, 16)


def test_full_size_vae_shapes_on_meta_device():
    vae = build.meta_vae()
    with torch.no_grad():
        latent = vae.encode(torch.empty(1, 3, 9, 32, 48, device="meta"), sample=False)
        assert latent.shape == (1, 16, 3, 4, 6)
        assert vae.decode(latent).shape == (1, 3, 9, 32, 48)


def test_windows_grouped_by_shape_cover_the_list_in_few_calls():
    windows = make_windows((6, 45, 80), (4, 3, 3), shifted=True)
    groups = group_windows(windows, (6, 45, 80))
    key = lambda w: tuple((a.start, a.stop) for a in w)
    assert sorted(key(w) for _, g in groups for w in g) == sorted(key(w) for w in windows)
    assert sum(len(g) for _, g in groups) == len(windows) == 64
    assert len(groups) <= 27 and all(window_shape(w, (6, 45, 80)) == s for s, g in groups for w in g)
    assert len(group_windows(windows, (6, 45, 80), max_tokens=0)) == 64


def test_window_batches_hold_at_most_the_token_budget():
    grid = (6, 45, 80)
    windows = make_windows(grid, (4, 3, 3), shifted=True)
    batches = group_windows(windows, grid, max_tokens=2048)
    tokens = [len(group) * math.prod(shape) for shape, group in batches]
    assert max(tokens) <= 2048 and sum(tokens) == 6 * 45 * 80
    assert len(group_windows(windows, grid)) < len(batches) < len(windows)
    assert [w for _, g in batches for w in g] != windows  # regrouped, yet every window once:
    assert sorted(map(str, (w for _, g in batches for w in g))) == sorted(map(str, windows))
    huge = group_windows(windows, grid, max_tokens=10)  # smaller than a window: one window per call
    assert len(huge) == len(windows)


@pytest.mark.parametrize("family", ["v2", "v1"])
@pytest.mark.parametrize("batch_tokens", [None, 100])
def test_batched_window_attention_equals_one_call_per_window(family, batch_tokens):
    """Many windows (a 720p-shaped token grid), regular and shifted layers, every window of a shape
    in one call or in bounded batches: the same numbers as one call per window."""
    dit = build.random_init_(NaDiT(config.small_dit(family)), seed=5).eval()
    vid, txt = _inputs(t=3, h=36, w=64, tokens=7)
    outputs = []
    with torch.no_grad():
        for tokens in (batch_tokens, 0):
            for block in dit.blocks:
                block.attn.batch_tokens = tokens
            outputs.append(dit(vid, txt, torch.tensor([700.0])))
    assert len(make_windows((3, 18, 32), (4, 3, 3), shifted=True)) > 9
    torch.testing.assert_close(*outputs, rtol=1e-5, atol=1e-5)
