"""Load / Save Conditioning through the real server, and every bad input as a clear error."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from devtools.comfy_server import REPO

WAN_BASIC = json.loads((REPO / "workflows" / "api" / "wan_basic.json").read_text())


def load_and_save(file_name: str) -> dict:
    return {"1": {"class_type": "LoadConditioningFile", "inputs": {"file": file_name}},
            "2": {"class_type": "SaveConditioningFile",
                  "inputs": {"conditioning": ["1", 0], "filename_prefix": "test_cond/roundtrip"}}}


def read_latent(result, server) -> torch.Tensor:
    files = [f for f in result.output_files(server.base_dir) if f.suffix == ".latent"]
    assert len(files) == 1, result.history.get("outputs")
    return load_file(str(files[0]))["latent_tensor"]


def test_bundled_wan_workflow_writes_a_deterministic_latent(server):
    first = server.run(WAN_BASIC)
    assert first.status == "success", first.error_text
    assert len(first.progress) >= 4, "KSampler progress did not reach the websocket"
    latent = read_latent(first, server)
    assert latent.shape == (1, 16, 2, 8, 8) and torch.isfinite(latent).all()
    server.free()  # drop ComfyUI's cache so the graph really runs again
    again = read_latent(server.run(WAN_BASIC), server)
    assert torch.equal(latent, again)
    other_seed = json.loads(json.dumps(WAN_BASIC))
    other_seed["5"]["inputs"]["seed"] = 43
    assert not torch.equal(latent, read_latent(server.run(other_seed), server))


def test_save_then_load_round_trip(server, input_dir):
    cond = torch.randn(1, 7, 32)
    pooled = torch.randn(1, 16)
    save_file({"cond": cond, "pooled_output": pooled}, str(input_dir / "test_rt.safetensors"))
    result = server.run(load_and_save("test_rt.safetensors"))
    assert result.status == "success", result.error_text
    (saved,) = result.output_files(server.base_dir)
    tensors = load_file(str(saved))
    assert torch.equal(tensors["cond"], cond) and torch.equal(tensors["pooled_output"], pooled)


def test_bare_torch_tensor_loads(server, input_dir):
    emb = torch.randn(58, 32)
    torch.save(emb, input_dir / "test_pos_emb.pt")
    result = server.run(load_and_save("test_pos_emb.pt"))
    assert result.status == "success", result.error_text
    (saved,) = result.output_files(server.base_dir)
    assert torch.equal(load_file(str(saved))["cond"], emb.unsqueeze(0))


def write_bad_inputs(input_dir):
    save_file({"embedding": torch.zeros(3, 4), "mask": torch.ones(3)}, str(input_dir / "test_wrong_names.safetensors"))
    save_file({"cond": torch.zeros(2, 3, 4, 5)}, str(input_dir / "test_wrong_shape.safetensors"))
    (input_dir / "test_garbage.safetensors").write_bytes(b"this is not safetensors at all")
    (input_dir / "test_notes.txt").write_text("hello")


BAD_FILES = [
    ("test_missing.safetensors", "not found"),
    ("../user/comfy.settings.json", "escapes"),
    ("/etc/passwd", "absolute"),
    ("test_wrong_names.safetensors", "holds: embedding, mask"),
    ("test_wrong_shape.safetensors", "[2, 3, 4, 5]"),
    ("test_garbage.safetensors", "not a readable safetensors"),
    ("test_notes.txt", "not a conditioning file"),
]


@pytest.mark.parametrize("file_name, expected", BAD_FILES)
def test_bad_file_is_a_clear_error_and_the_server_goes_on(server, input_dir, file_name, expected):
    write_bad_inputs(input_dir)
    result = server.run(load_and_save(file_name))
    assert result.status == "error"
    assert "InputError: file: " in result.error_text, result.error_text
    assert expected in result.error_text
    follow_up = server.run(WAN_BASIC)
    assert follow_up.status == "success", follow_up.error_text
