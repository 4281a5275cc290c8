import pytest
import torch
from safetensors.torch import save_file

from comfyui_parallel.utils.conditioning_file import read_conditioning, write_conditioning
from comfyui_parallel.utils.errors import InputError


def test_two_and_three_dim_cond_load_batched(tmp_path):
    cond = torch.randn(5, 8)
    save_file({"cond": cond}, str(tmp_path / "a.safetensors"))
    save_file({"cond": cond[None], "pooled_output": torch.ones(4)}, str(tmp_path / "b.safetensors"))
    a, pooled_a = read_conditioning(tmp_path / "a.safetensors")
    b, pooled_b = read_conditioning(tmp_path / "b.safetensors")
    assert torch.equal(a, cond[None]) and torch.equal(b, cond[None])
    assert pooled_a is None and pooled_b.shape == (1, 4)


def test_round_trip(tmp_path):
    cond, pooled = torch.randn(1, 3, 8), torch.randn(1, 4)
    write_conditioning(tmp_path / "c.safetensors", cond, pooled)
    got, got_pooled = read_conditioning(tmp_path / "c.safetensors")
    assert torch.equal(got, cond) and torch.equal(got_pooled, pooled)


def test_pickled_objects_are_not_loaded(tmp_path):
    torch.save({"cond": torch.zeros(2, 2), "obj": object()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not a readable torch tensor file"):
        read_conditioning(tmp_path / "evil.pt")


def test_integer_cond_is_refused(tmp_path):
    save_file({"cond": torch.zeros(2, 3, dtype=torch.int64)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(InputError, match="floating point"):
        read_conditioning(tmp_path / "i.safetensors")
