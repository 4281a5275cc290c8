"""The alternatives the offloader was measured against give the same output on ComfyUI's Wan.

diffusers' group offloading (block_level) and ComfyUI's own lowvram mode run on the same
tiny Wan as this pack's offloader; all must equal the plain forward exactly. Their cost per
block is compared in benchmarks/bench_offload.py.
"""
import torch
from diffusers.hooks import apply_group_offloading

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()

import comfy.sd  # noqa: E402
from devtools.demo_models import tiny_wan_state_dict  # noqa: E402

from comfyui_parallel.models.offload.patcher import KEY, OffloadSettings, apply_offload  # noqa: E402


def test_pack_diffusers_and_comfy_lowvram_match_plain_forward():
    state = tiny_wan_state_dict(num_layers=4, seed=5)
    plain, for_diffusers, for_lowvram = (comfy.sd.load_diffusion_model_state_dict(dict(state)) for _ in range(3))
    cpu = torch.device("cpu")
    ours = apply_offload(plain, OffloadSettings(blocks_to_swap=4, prefetch_blocks=1))
    ours.patch_model(cpu)
    apply_group_offloading(for_diffusers.model.diffusion_model, onload_device=cpu, offload_device=cpu,
                           offload_type="block_level", num_blocks_per_group=1)
    for_lowvram.load(cpu, lowvram_model_memory=1)
    assert for_lowvram.model.model_lowvram
    torch.manual_seed(0)
    x, t, context = torch.randn(2, 16, 1, 8, 8), torch.tensor([300.0, 300.0]), torch.randn(2, 6, 4096)

    def forward(patcher, wrappers=None):
        options = {"wrappers": wrappers} if wrappers else {}
        with torch.inference_mode():
            return patcher.model.diffusion_model(x, t, context, transformer_options=options)

    expected = forward(plain)
    ledger = ours.get_attachment(KEY).ledger
    assert torch.equal(forward(ours, ours.wrappers), expected)
    assert [e.block for e in ledger.events if e.kind == "fetch"] == [0, 1, 2, 3]
    assert torch.equal(forward(for_diffusers), expected)
    assert torch.equal(forward(for_lowvram), expected)
