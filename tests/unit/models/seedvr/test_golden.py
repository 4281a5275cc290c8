"""The pack's SeedVR against the official code's own outputs (tests/data/seedvr/golden, Apache-2.0).

Each case of the reference's small random-weight 3B / 7B DiTs, VAE, preprocessing and schedule is
loaded into the pack's models and compared with the tolerances of golden/README.md.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from comfyui_parallel.models.seedvr import loading
from comfyui_parallel.models.seedvr.dit import NaDiT, emb_slot
from comfyui_parallel.models.seedvr.frames import area_size, crop_offsets, preprocess
from comfyui_parallel.models.seedvr.sampling import (cfg_combine, condition_noise_timestep, euler_sample,
                                                     sampling_timesteps, sr_condition, timestep_transform)
from comfyui_parallel.models.seedvr.vae import VideoVAE

GOLDEN = Path(__file__).resolve().parents[3] / "data" / "seedvr" / "golden"
DIT_CASES = ["image_1x12x16", "temporal_6x10x14", "spatial_3x36x54"]
TRACED = DIT_CASES[:2]


def _golden(name: str) -> tuple:
    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["golden"])
    return load_file(str(path)), meta


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def _state(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if not k.startswith("io/")}


def _dit(name: str) -> tuple:
    tensors, meta = _golden(name)
    state = _state(tensors)
    with torch.device("meta"):
        dit = NaDiT(loading.infer_dit_config(state))
    dit.load_state_dict(state, strict=True, assign=True)
    return name, dit.eval(), tensors, meta


@pytest.fixture(scope="module", params=["dit_3b", "dit_7b"])
def dit_golden(request):
    return _dit(request.param)


def test_dit_config_read_from_the_weights_is_the_reference_config(dit_golden):
    _, dit, _, meta = dit_golden
    ref, cfg = meta["config"], dit.cfg
    assert (cfg.vid_dim, cfg.txt_in_dim, cfg.heads, cfg.head_dim, cfg.num_layers) == (
        ref["vid_dim"], ref["txt_in_dim"], ref["heads"], ref["head_dim"], ref["num_layers"])
    assert cfg.family == ("v2" if ref.get("mlp_type") == "swiglu" else "v1")
    assert [tuple(w) for w in ref["window"]] == [cfg.window] * cfg.num_layers


@pytest.mark.parametrize("case", DIT_CASES)
def test_dit_output_matches_reference(dit_golden, case):
    _, dit, tensors, _ = dit_golden
    io = lambda k: tensors[f"io/{case}/{k}"]
    with torch.no_grad():
        out = dit(io("vid"), io("txt"), io("timestep"))
    assert out.shape == io("vid_sample").shape
    assert _relative(out, io("vid_sample")) <= 1e-4


@pytest.mark.parametrize("case", TRACED)
def test_dit_each_stage_matches_reference_on_its_golden_inputs(dit_golden, case):
    """Feeding block N the reference's outputs of block N-1 tests each block on its own (the 3B's
    last block takes its text unmodulated)."""
    _, dit, tensors, _ = dit_golden
    io = lambda k: tensors[f"io/{case}/{k}"]
    last = len(dit.blocks) - 1
    with torch.no_grad():
        assert _relative(dit.txt_in(io("txt")), io("txt_in_out")) <= 1e-4
        assert _relative(dit.vid_in(io("vid")), io("vid_in_out")) <= 1e-4
        emb = io("emb")
        assert _relative(dit.emb_in(io("timestep"), torch.float32), emb) <= 1e-4
        vid, txt = io("vid_in_out"), io("txt_in_out")
        for n, block in enumerate(dit.blocks):
            got_vid, got_txt = block(vid, txt, emb)
            assert _relative(got_vid, io(f"block{n}_vid")) <= 1e-4, f"block {n}"
            if n < last:
                assert _relative(got_txt, io(f"block{n}_txt")) <= 1e-4, f"block {n} text"
                vid, txt = io(f"block{n}_vid"), io(f"block{n}_txt")
        head_in = io(f"block{last}_vid")
        if dit.cfg.family == "v2":
            head_in = dit.vid_out_ada.modulate_in(dit.vid_out_norm(head_in), emb_slot(emb, 0), "out")
        assert _relative(head_in, io("vid_out_in")) <= 1e-4


def test_3b_last_block_text_modulation_matters():
    """Modulating the text in the 3B's last block (the old behaviour) misses the reference by far
    more than the tolerance: the golden case can tell the two apart."""
    _, dit, tensors, _ = _dit("dit_3b")
    block = dit.blocks[-1]
    io = lambda k: tensors[f"io/temporal_6x10x14/{k}"]
    block.modulates_text = True
    try:
        with torch.no_grad():
            wrong, _ = block(io("block1_vid"), io("block1_txt"), io("emb"))
    finally:
        block.modulates_text = False
    assert _relative(wrong, io("block2_vid")) > 1e-2


@pytest.fixture(scope="module")
def vae_golden():
    tensors, meta = _golden("vae")
    state = _state(tensors)
    with torch.device("meta"):
        vae = VideoVAE(loading.infer_vae_config(state))
    vae.load_state_dict(state, strict=True, assign=True)
    vae.chunk_frames = meta["runtime"]["slicing"]["split_size"]
    return vae.eval(), tensors, meta


@pytest.mark.parametrize("case", ["encode_1f", "encode_5f", "encode_9f"])
def test_vae_encode_matches_reference(vae_golden, case):
    vae, tensors, meta = vae_golden
    io = lambda k: tensors[f"io/{case}/{k}"]
    generator = torch.Generator().manual_seed(meta["cases"][case]["noise_seed"])
    with torch.no_grad():
        mean = vae.encode(io("video"), sample=False)
        sample = vae.encode(io("video"), generator=generator)
    assert _relative(mean, io("latent_mean")) <= 1e-4
    assert _relative(sample, io("latent_sample")) <= 1e-4


@pytest.mark.parametrize("case", ["decode_1l", "decode_2l", "decode_3l"])
def test_vae_decode_matches_reference(vae_golden, case):
    vae, tensors, _ = vae_golden
    with torch.no_grad():
        video = vae.decode(tensors[f"io/{case}/latent"])
    assert video.shape == tensors[f"io/{case}/video"].shape
    assert _relative(video, tensors[f"io/{case}/video"]) <= 1e-4


@pytest.fixture(scope="module")
def preprocess_golden():
    return _golden("preprocess")


PREPROCESS_CASES = ["1080x1440_to_720x1280", "37x53_to_64x96", "71x29_to_80x48", "90x161_to_64x112",
                    "48x64_to_48x64", "100x30_to_64x96", "61x45_to_48x80", "200x150_to_96x64"]


@pytest.mark.parametrize("case", PREPROCESS_CASES)
def test_preprocess_matches_reference_resize_crop_and_values(preprocess_golden, case):
    tensors, meta = preprocess_golden
    info = meta["cases"][case]
    stored = " ".join(info["tensors"])
    if "frames_u8_tile" in stored:
        frames = tensors[f"io/{case}/frames_u8_tile"].repeat(1, 4, 4, 1)
        assert frames.sum(dtype=torch.int64).item() == info["frames_u8_sum"]
    else:
        frames = tensors[f"io/{case}/frames_u8"]
    resized = area_size(*info["input_hw"], info["res_h"], info["res_w"])
    assert list(resized) == info["resized_hw"]
    assert list(crop_offsets(*resized)) == info["crop_top_left"]
    out = preprocess(frames.float() / 255, info["res_h"], info["res_w"]).permute(1, 0, 2, 3)
    assert list(out.shape) == info["output_shape"]
    if "output_stride4" in stored:
        expected = tensors[f"io/{case}/output_stride4"]
        assert (out[:, :, ::4, ::4] - expected).abs().max() <= 1e-3
        stats = info["full_output_stats_float64"]
        full = out.double()
        assert full.sum().item() == pytest.approx(stats["sum"], abs=1e-3 * full.numel() ** 0.5)
        assert full.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=1e-6)
        assert full.square().sum().item() == pytest.approx(stats["sum_sq"], rel=1e-6)
    else:
        assert (out - tensors[f"io/{case}/output"]).abs().max() <= 1e-3


@pytest.fixture(scope="module")
def schedule_golden():
    return _golden("schedule")


def test_sampling_timesteps_match_reference(schedule_golden):
    tensors, meta = schedule_golden
    for steps, info in meta["sampling_timesteps"]["steps"].items():
        got, expected = sampling_timesteps(int(steps)), tensors[info["key"]]
        assert got.shape == expected.shape, f"{steps} steps"
        assert (got - expected).abs().max() <= 1e-3, f"{steps} steps"


def test_timestep_transform_matches_reference(schedule_golden):
    tensors, _ = schedule_golden
    rows, ts, shifted = tensors["transform/shape_rows"], tensors["transform/t"], tensors["transform/t_shifted"]
    for row, t, expected in zip(rows.tolist(), ts.tolist(), shifted.tolist()):
        assert abs(timestep_transform(t, tuple(row)) - expected) <= 1e-3, (row, t)


def test_sr_condition_matches_reference(schedule_golden):
    tensors, _ = schedule_golden
    latent, noise = tensors["sr_condition/latent_blur"], tensors["sr_condition/aug_noise"]
    assert abs(condition_noise_timestep(0.1, tuple(latent.shape)) - tensors["sr_condition/t"].item()) <= 1e-3
    assert _relative(sr_condition(latent, noise, 0.1), tensors["sr_condition/condition"]) <= 1e-5


@pytest.mark.parametrize("case", ["euler_1step", "euler_4steps_cfg6.5", "euler_49steps"])
def test_euler_and_cfg_match_reference(schedule_golden, case):
    tensors, meta = schedule_golden
    info = meta["euler"]["cases"][case]
    get = lambda k: tensors.get(f"euler/{case}/{k}")
    v_pos, v_neg, calls = get("v_pos"), get("v_neg"), []

    def model(x, t):
        i = len(calls)
        calls.append(t.item())
        return cfg_combine(v_pos[i], None if v_neg is None else v_neg[i], info["cfg_scale"])

    out = euler_sample(get("x_T"), model, info["steps"])
    assert len(calls) == info["model_calls"]
    assert max(abs(a - b) for a, b in zip(calls, get("t_calls").tolist())) <= 1e-3
    assert _relative(out, get("x_0")) <= 1e-5
