"""Checkpoint loading: formats, variant detection, strict key/shape matching with named errors."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_parallel.models.seedvr import loading
from comfyui_parallel.utils.errors import InputError


def _state(module):
    return {k: v.clone().contiguous() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_v2):
    folder = tmp_path_factory.mktemp("seedvr")
    dit, vae = tiny_v2
    save_file(_state(dit), str(folder / "seedvr2_tiny.safetensors"))
    torch.save(_state(dit), folder / "seedvr_tiny.pth")
    torch.save(_state(vae), folder / "ema_vae.pth")
    return folder


@pytest.mark.parametrize("name", ["seedvr2_tiny.safetensors", "seedvr_tiny.pth"])
def test_roundtrip_gives_identical_outputs(files, tiny_v2, name):
    dit, _, sampler, embeddings = loading.load_dit(files / name, "auto", torch.float32)
    vid, txt = torch.randn(1, 4, 4, 33), torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(dit(vid, txt, torch.tensor([1000.0])), tiny_v2[0](vid, txt, torch.tensor([1000.0])))
    assert sampler.cond_noise_scale == (0.0 if name.startswith("seedvr2") else 0.1)
    assert embeddings == {}


def test_precision_cast_and_rope_buffer_kept_float32(files):
    dit, *_ = loading.load_dit(files / "seedvr2_tiny.safetensors", "auto", torch.bfloat16)
    assert dit.txt_in.weight.dtype == torch.bfloat16
    assert dit.blocks[0].attn.rope.rope.freqs.dtype == torch.float32


def test_variant_names_from_size_and_file():
    from comfyui_parallel.models.seedvr.config import DIT_3B, DIT_7B

    assert loading.variant_name(DIT_3B, "seedvr2_ema_3b.pth") == "seedvr2_3b"
    assert loading.variant_name(DIT_7B, "seedvr_ema_7b_fp16.safetensors") == "seedvr_7b"
    assert loading.infer_dit_config({k: v for k, v in _meta_state("seedvr_7b").items()}) == DIT_7B
    assert loading.infer_dit_config(_meta_state("seedvr_3b")) == DIT_3B


def _meta_state(name):
    from comfyui_parallel.models.seedvr.build import meta_dit

    return meta_dit(name).state_dict()


def test_missing_extra_and_misshaped_keys_are_named(tmp_path, tiny_v2):
    state = _state(tiny_v2[0])
    del state["blocks.0.mlp.vid.proj_in.weight"]
    state["blocks.0.attn.extra.weight"] = torch.zeros(1)
    state["txt_in.bias"] = torch.zeros(65)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError) as error:
        loading.load_dit(tmp_path / "bad.safetensors", "auto", torch.float32)
    text = str(error.value)
    assert text.startswith("dit_name:")
    for name in ("blocks.0.mlp.vid.proj_in.weight", "blocks.0.attn.extra.weight", "txt_in.bias"):
        assert name in text


def test_named_variant_that_does_not_match_is_refused(files):
    with pytest.raises(InputError, match="seedvr_7b.*missing keys"):
        loading.load_dit(files / "seedvr2_tiny.safetensors", "seedvr_7b", torch.float32)
    with pytest.raises(InputError, match="variant"):
        loading.load_dit(files / "seedvr2_tiny.safetensors", "seedvr_9b", torch.float32)


def test_missing_rope_buffers_are_recomputed(tmp_path, tiny_v2):
    state = {k: v for k, v in _state(tiny_v2[0]).items() if not k.endswith("rope.rope.freqs")}
    save_file(state, str(tmp_path / "norope.safetensors"))
    dit, *_ = loading.load_dit(tmp_path / "norope.safetensors", "auto", torch.float32)
    torch.testing.assert_close(dit.blocks[1].attn.rope.rope.freqs, tiny_v2[0].blocks[1].attn.rope.rope.freqs)


def test_vae_loads_and_mismatched_files_are_refused(files, tmp_path, tiny_v2):
    vae = loading.load_vae(files / "ema_vae.pth", torch.float32)
    assert vae.cfg == tiny_v2[1].cfg
    with pytest.raises(InputError, match="vae_name: not a SeedVR video VAE"):
        loading.load_vae(files / "seedvr2_tiny.safetensors", torch.float32)
    with pytest.raises(InputError, match="dit_name: not a SeedVR DiT"):
        loading.load_dit(files / "ema_vae.pth", "auto", torch.float32)
    four_channel = _state(tiny_v2[1])
    four_channel["decoder.conv_in.weight"] = torch.zeros(64, 4, 3, 3, 3)
    save_file(four_channel, str(tmp_path / "sd_vae.safetensors"))
    with pytest.raises(InputError, match="16 latent channels"):
        loading.load_vae(tmp_path / "sd_vae.safetensors", torch.float32)


def test_old_diffusers_attention_names_are_renamed(tmp_path, tiny_v2):
    state = {k.replace("attentions.0.to_q.", "attentions.0.query."): v for k, v in _state(tiny_v2[1]).items()}
    save_file(state, str(tmp_path / "old.safetensors"))
    vae = loading.load_vae(tmp_path / "old.safetensors", torch.float32)
    torch.testing.assert_close(vae.encoder.mid_block.attentions[0].to_q.weight,
                               tiny_v2[1].encoder.mid_block.attentions[0].to_q.weight)


def test_corrupt_and_pickled_files_are_refused(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read 'broken.safetensors'"):
        loading.load_dit(tmp_path / "broken.safetensors", "auto", torch.float32)
    torch.save({"weights": {"a": object()}}, tmp_path / "pickled.pth")
    with pytest.raises(InputError, match="cannot read 'pickled.pth'"):
        loading.load_dit(tmp_path / "pickled.pth", "auto", torch.float32)


GOLDEN = Path(__file__).resolve().parents[3] / "data" / "seedvr"
FP8 = torch.float8_e4m3fn
# Comfy-Org's repackaged files: (file name, the architecture, the stored dtype)
COMFY_ORG = [("seedvr2_3b_fp16", "dit_3b", torch.float16), ("seedvr2_3b_fp8_e4m3fn", "dit_3b", FP8),
             ("seedvr2_7b_fp16", "dit_7b", torch.float16), ("seedvr2_7b_fp8_e4m3fn", "dit_7b", FP8),
             ("seedvr2_7b_sharp_fp16", "dit_7b", torch.float16)]


def _comfy_org(state, dtype, tokens=(58, 64)):
    """Comfy-Org's layout: the official keys, every tensor in `dtype`, plus the two conditioning buffers."""
    g = torch.Generator().manual_seed(11)
    out = {k: v.to(dtype) for k, v in state.items()}
    width = state["txt_in.weight"].shape[1]
    for name, count in zip(("positive", "negative"), tokens):
        out[f"{name}_conditioning"] = torch.randn(count, width, generator=g).to(dtype)
    return out


def _golden_dit(name):
    tensors = load_file(str(GOLDEN / "golden" / f"{name}.safetensors"))
    return {k: v for k, v in tensors.items() if not k.startswith("io/")}


@pytest.mark.parametrize("file_name,architecture,dtype", COMFY_ORG)
def test_comfy_org_repackaged_files_load_with_their_embeddings(tmp_path, file_name, architecture, dtype):
    """The reference's small 3B / 7B DiTs written in each repackaged layout load, fp8 upcast to the
    compute precision, with the stored weights exactly, the rotary constants recomputed, the embeddings out."""
    official = _golden_dit(architecture)
    state = _comfy_org(official, dtype)
    save_file(state, str(tmp_path / f"{file_name}.safetensors"))
    dit, name, sampler, embeddings = loading.load_dit(tmp_path / f"{file_name}.safetensors", "auto", torch.float32)
    assert name == "seedvr2_custom" and sampler.steps == 1
    assert dit.cfg == loading.infer_dit_config(official)
    loaded = dit.state_dict()
    for key, tensor in official.items():
        expected = tensor if key.endswith(loading.ROPE_SUFFIX) else state[key].float()
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], expected), key
    assert sorted(embeddings) == ["negative", "positive"]
    assert embeddings["positive"].shape == (58, dit.cfg.txt_in_dim) and embeddings["negative"].shape[0] == 64
    assert torch.equal(embeddings["negative"], state["negative_conditioning"].float())


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_full_size_repackaged_layout_is_the_official_one_plus_two_buffers(size):
    """The reference key manifest (names, shapes) plus [58, 5120] / [64, 5120], on the meta device:
    the named variant accepts it and hands the buffers back as its embeddings."""
    lines = (GOLDEN / f"seedvr_dit_{size}.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    state = {key: torch.empty(tuple(map(int, shape.split(","))), dtype=torch.float16, device="meta")
             for key, shape, _dtype in rows}
    state["positive_conditioning"] = torch.empty(58, 5120, dtype=torch.float16, device="meta")
    state["negative_conditioning"] = torch.empty(64, 5120, dtype=torch.float16, device="meta")
    dit, name, _, embeddings = loading.dit_from_state(state, f"seedvr2_{size}", f"seedvr2_{size}_fp16.safetensors",
                                                      torch.bfloat16)
    assert name == f"seedvr2_{size}" and dit.txt_in.weight.dtype == torch.bfloat16
    assert {k: tuple(v.shape) for k, v in embeddings.items()} == {"positive": (58, 5120), "negative": (64, 5120)}
    auto = loading.dit_from_state(state, "auto", f"seedvr2_{size}_sharp_fp16.safetensors", torch.bfloat16)
    assert auto[1] == f"seedvr2_{size}"


def test_comfy_org_fp16_vae_loads(tmp_path, tiny_v2):
    state = {k: v.half() for k, v in _state(tiny_v2[1]).items()}
    save_file(state, str(tmp_path / "seedvr2_ema_vae_fp16.safetensors"))
    vae = loading.load_vae(tmp_path / "seedvr2_ema_vae_fp16.safetensors", torch.float32)
    loaded = vae.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())


def test_baked_embedding_of_wrong_width_and_other_extra_keys_are_refused(tmp_path, tiny_v2):
    state = _comfy_org(_state(tiny_v2[0]), torch.float16)
    state["positive_conditioning"] = torch.zeros(58, 31, dtype=torch.float16)
    save_file(state, str(tmp_path / "wide.safetensors"))
    with pytest.raises(InputError, match=r"dit_name: positive_conditioning has shape \(58, 31\)"):
        loading.load_dit(tmp_path / "wide.safetensors", "auto", torch.float32)
    state = _comfy_org(_state(tiny_v2[0]), torch.float16)
    state["pooled_conditioning"] = torch.zeros(1, 32)
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InputError, match="unexpected keys: pooled_conditioning"):
        loading.load_dit(tmp_path / "extra.safetensors", "auto", torch.float32)
