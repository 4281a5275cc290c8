"""models/blocks.py on ComfyUI's own Wan model: the block list is found, anything else is refused."""
import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy
from comfyui_parallel.utils.errors import InputError

ensure_comfy()

from comfyui_parallel.models.wan.blocks import transformer_blocks  # noqa: E402


def test_wan_blocks_found_directly_and_through_base_model():
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        wan = WanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=3, text_dim=4096, in_dim=16, out_dim=16,
                       freq_dim=256, operations=comfy.ops.disable_weight_init)
    assert transformer_blocks(wan) is wan.blocks and len(wan.blocks) == 3

    class BaseModelLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = wan

    assert transformer_blocks(BaseModelLike()) is wan.blocks


def test_unknown_model_refused_naming_supported_families():
    with pytest.raises(InputError, match="model: Linear has no known transformer block list.*WanModel"):
        transformer_blocks(torch.nn.Linear(2, 2))
