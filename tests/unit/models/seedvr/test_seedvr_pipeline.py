"""The upscale pipeline on small models: shapes, determinism, chunking, offload parity, errors."""
import dataclasses

import pytest
import torch

from comfyui_parallel.models.seedvr import config
from comfyui_parallel.models.seedvr.color_fix import adain_fix, color_fix, wavelet_fix
from comfyui_parallel.models.seedvr.pipeline import Hooks, SeedVRModel, UpscaleSettings, upscale
from comfyui_parallel.offload import swap
from comfyui_parallel.utils.errors import InputError

SETTINGS = UpscaleSettings(res_h=32, res_w=48, cfg_scale=2.0, sample_steps=2, seed=3, batch_size=5)


@pytest.fixture
def model(tiny_v2):
    return SeedVRModel(tiny_v2[0], tiny_v2[1], "seedvr_custom", config.SAMPLER_V1)


def _frames(n=6, h=20, w=30):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(n))


def _emb(tokens, seed):
    return torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed))


def _run(model, settings=SETTINGS, frames=None, hooks=Hooks()):
    return upscale(model, _frames() if frames is None else frames, _emb(4, 1), _emb(6, 2), settings, hooks)


def test_output_shape_range_determinism_and_progress(model):
    seen = []
    out = _run(model, hooks=Hooks(progress=lambda d, n: seen.append((d, n))))
    assert out.shape == (6, 32, 48, 3) and out.min() >= 0 and out.max() <= 1
    assert seen[-1] == (4, 4)  # 2 chunks (6 frames, 5 per chunk) x 2 steps
    assert torch.equal(out, _run(model))
    assert not torch.equal(out, _run(model, dataclasses.replace(SETTINGS, seed=4)))


def test_single_image(model):
    assert _run(model, frames=_frames(1)).shape == (1, 32, 48, 3)


def test_temporal_overlap_changes_only_the_seam_region(model):
    frames = _frames(9)
    plain = _run(model, dataclasses.replace(SETTINGS, batch_size=5, temporal_overlap=0), frames)
    overlap = _run(model, dataclasses.replace(SETTINGS, batch_size=5, temporal_overlap=2), frames)
    assert plain.shape == overlap.shape == (9, 32, 48, 3)
    torch.testing.assert_close(plain[:3], overlap[:3])


def test_block_swap_gives_identical_result_and_books_every_swapped_block(model, monkeypatch):
    reference = _run(model)
    ledgers = []
    original = swap.enable_offload

    def spy(blocks, cfg, ledger=None):
        offloader = original(blocks, cfg, ledger)
        ledgers.append(offloader.ledger)
        return offloader

    monkeypatch.setattr("comfyui_parallel.models.seedvr.pipeline.enable_offload", spy)
    model.blocks_to_swap = 1
    try:
        swapped = _run(model)
    finally:
        model.blocks_to_swap = 0
    assert torch.equal(swapped, reference)
    fetched = [e.block for e in ledgers[0].events if e.kind == "fetch"]
    assert fetched and set(fetched) == {1}
    # 2 chunks x 2 steps x 2 CFG branches forwards, each fetching block 1 once
    assert len(fetched) == 8


def test_cfg_one_needs_no_negative(model):
    settings = dataclasses.replace(SETTINGS, cfg_scale=1.0)
    out = upscale(model, _frames(), _emb(4, 1), None, settings)
    assert out.shape == (6, 32, 48, 3)


def test_missing_or_mismatched_embeddings_are_refused(model):
    with pytest.raises(InputError, match="negative: no text embedding"):
        upscale(model, _frames(), _emb(4, 1), None, SETTINGS)
    with pytest.raises(InputError, match=r"positive: .*\[tokens, 32\]"):
        upscale(model, _frames(), torch.randn(1, 4, 5120), _emb(6, 2), SETTINGS)


@pytest.mark.parametrize("field,value,name", [("batch_size", 4, "batch_size"), ("temporal_overlap", 5, "temporal_overlap"),
                                              ("sample_steps", 0, "sample_steps"), ("color_fix", "magic", "color_fix")])
def test_bad_settings_name_the_input(model, field, value, name):
    with pytest.raises(InputError, match=f"^{name}:"):
        _run(model, dataclasses.replace(SETTINGS, **{field: value}))


def test_cancel_stops_the_run(model):
    class Stop(Exception):
        pass

    def cancel():
        raise Stop()

    with pytest.raises(Stop):
        _run(model, hooks=Hooks(check_cancel=cancel))


def test_color_fixes_move_statistics_towards_the_reference():
    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g) * 0.2 + 0.7
    fixed = adain_fix(content, style)
    torch.testing.assert_close(fixed.mean((-2, -1)), style.mean((-2, -1)), atol=1e-4, rtol=1e-4)
    wave = wavelet_fix(content, style)
    assert (wave.mean() - style.mean()).abs() < 0.05
    assert torch.equal(color_fix(content, style, "none"), content)


def test_embeddings_baked_into_the_checkpoint_stand_in_for_missing_inputs(model):
    given = _run(model)
    model.embeddings = {"positive": _emb(4, 1)[0], "negative": _emb(6, 2)[0]}
    try:
        baked = upscale(model, _frames(), None, None, SETTINGS)
        only_negative_baked = upscale(model, _frames(), _emb(4, 1), None, SETTINGS)
        other_positive = upscale(model, _frames(), _emb(4, 9), None, SETTINGS)
    finally:
        model.embeddings = {}
    assert torch.equal(baked, given) and torch.equal(only_negative_baked, given)
    assert not torch.equal(other_positive, given)  # a given input wins over the baked-in one
