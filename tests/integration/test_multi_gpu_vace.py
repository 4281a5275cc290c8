"""Wan VACE under block_distribution on simulated devices: VACE's forward adds its skip (computed on
the main device) to the hidden state between blocks, so a block on cpu:1 must hand its output back
before that; the latent equals the plain model's for the same seed. Loaded by ComfyUI's own
detection (`vace_patch_embedding` / `vace_blocks` keys -> WAN21_Vace), sampled with its default
VACE inputs (no reference frames: zeros, mask of ones)."""
import pytest
import torch

from multi_gpu_helpers import sample  # configures ComfyUI for the CPU first

import comfy.ldm.wan.model as wan_model  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sd  # noqa: E402
from comfy.ldm.wan.model import VaceWanModel, WanModel  # noqa: E402
from comfyui_parallel.models.multi_gpu.patcher import placement_of  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.wan.family import works_between_blocks  # noqa: E402
from devtools.demo_models import random_init_  # noqa: E402

NUM_LAYERS, VACE_LAYERS = 8, 2


def tiny_vace_state_dict(seed: int = 0) -> dict:
    """A VACE Wan (dim 128, 8 blocks, VACE blocks after blocks 0 and 4) in ComfyUI's key layout."""
    model = VaceWanModel(model_type="vace", dim=128, ffn_dim=256, num_heads=1, num_layers=NUM_LAYERS, text_dim=4096,
                         in_dim=16, out_dim=16, freq_dim=256, vace_layers=VACE_LAYERS, vace_in_dim=96,
                         operations=comfy.ops.disable_weight_init)
    return {k: v.contiguous() for k, v in random_init_(model, seed).state_dict().items()}


@pytest.fixture(scope="module")
def state_dict():
    return tiny_vace_state_dict()


def load(state_dict):
    return comfy.sd.load_diffusion_model_state_dict(dict(state_dict))


def test_vace_block_distribution_equals_the_plain_model(state_dict, simulated_devices):
    expected = sample(load(state_dict))
    plain = load(state_dict)
    assert type(plain.model.diffusion_model) is VaceWanModel
    model = apply_multi_gpu(plain, resolve(plain, MultiGPURequest("block_distribution", "cpu,cpu")))
    torch.testing.assert_close(sample(model), expected, rtol=0, atol=0)
    devices = {str(d) for d in placement_of(model.model).distribution.block_devices}
    assert devices == {"cpu:0", "cpu:1"}
    weights = model.model.diffusion_model.blocks[-1].self_attn.q.weight
    assert weights.device == torch.device("cpu", 1)  # the last block really computed on the other device


SUBCLASSES = sorted((c for c in vars(wan_model).values() if isinstance(c, type) and issubclass(c, WanModel)
                     and c is not WanModel), key=lambda c: c.__name__)  # VACE, Camera, S2V, HuMo (0.3.75)


def test_only_plain_wan_chains_its_blocks_alone():
    assert not works_between_blocks(WanModel.__new__(WanModel))
    assert VaceWanModel in SUBCLASSES
    assert all(works_between_blocks(c.__new__(c)) for c in SUBCLASSES), SUBCLASSES
