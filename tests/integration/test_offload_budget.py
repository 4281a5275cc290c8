"""What the offloading patcher takes from ComfyUI's memory accounting, and how it pins on CUDA.

- A partial (lowvram) load gets ComfyUI's budget less the prefetch window, so the resident
  weights plus the swapped blocks in flight stay inside what ComfyUI gave.
- blocks_to_swap 0 with vram_budget_gb 0 is chosen at load time from the free memory the
  patcher reports then (0.38's `get_free_memory`), not when the node ran.
- On CUDA the swapped (LoRA-patched) weights are page-locked at load: with ComfyUI's in-place
  pinning where it has one, else with the engine's pinned copy. This machine has no CUDA driver,
  so real pinning fails (the warning path); a stand-in page-locker shows the other path.
"""
import logging

import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
from devtools.demo_models import tiny_wan_state_dict  # noqa: E402

from comfyui_parallel.models.comfy import patcher as host  # noqa: E402
from comfyui_parallel.models.comfy.management import inference_reserve  # noqa: E402
from comfyui_parallel.models.offload.patcher import KEY, OffloadSettings, apply_offload, block_sizes  # noqa: E402
from comfyui_parallel.nodes.offload import resolve_settings  # noqa: E402
from comfyui_parallel.offload import streams  # noqa: E402
from comfyui_parallel.offload.ledger import planned_peak  # noqa: E402

CPU = torch.device("cpu")
NODE_DEFAULTS = dict(prefetch_blocks=0, pin_memory=True, offload_device="cpu", gradient_checkpointing=False)


@pytest.fixture
def model():
    comfy.model_management.unload_all_models()
    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(num_layers=4, seed=9))


def forward(patcher):
    torch.manual_seed(0)
    x, t, context = torch.randn(1, 16, 1, 8, 8), torch.tensor([400.0]), torch.randn(1, 6, 4096)
    with torch.inference_mode():
        return patcher.model.diffusion_model(x, t, context, transformer_options={"wrappers": patcher.wrappers})


def test_a_lowvram_load_leaves_the_prefetch_window_inside_comfyuis_budget(model):
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap=2, prefetch_blocks=1))
    sizes, other = block_sizes(offloaded.model)
    window = offloaded.window_bytes()
    assert window == sizes[2] + sizes[3]
    budget = other + sizes[0] + sizes[1] + sizes[0] // 2  # every resident weight would fit, the window not
    offloaded.load(CPU, lowvram_model_memory=budget)
    try:
        assert offloaded.model.model_lowvram
        assert offloaded.model.model_loaded_weight_memory <= budget  # resident weights + the window
    finally:
        offloaded.unpatch_model(CPU)


def test_auto_blocks_to_swap_is_read_from_the_patchers_free_memory_at_load(model):
    expected = forward(model)
    settings = resolve_settings(model, blocks_to_swap=0, vram_budget_gb=0.0, **NODE_DEFAULTS)
    assert settings.blocks_to_swap is None
    offloaded = apply_offload(model, settings)
    sizes, other = block_sizes(offloaded.model)
    assert offloaded.model_size() == sum(sizes) + other  # before the load ComfyUI makes room for all of it
    fits_two = planned_peak(sizes, 2, 0, base_bytes=other)  # < planned_peak(sizes, 1, 0, ...)
    offloaded.get_free_memory = lambda device: fits_two + inference_reserve()  # as ComfyUI 0.38's patcher reports
    offloaded.load(CPU)
    try:
        state = offloaded.get_attachment(KEY)
        assert state.blocks_to_swap == 2 and offloaded.model_size() == fits_two
        assert torch.equal(forward(offloaded), expected)
        assert [e.block for e in state.ledger.events if e.kind == "fetch"] == [2, 3]
    finally:
        offloaded.unpatch_model(CPU)


def test_auto_with_too_little_free_memory_is_a_clear_error_at_load(model):
    offloaded = apply_offload(model, resolve_settings(model, blocks_to_swap=0, vram_budget_gb=0.0, **NODE_DEFAULTS))
    offloaded.get_free_memory = lambda device: inference_reserve() + 1
    with pytest.raises(Exception, match="vram_budget_gb: 0.00 GB cannot hold the model even with every block"):
        offloaded.load(CPU)


def lora(model):
    """A LoRA-like patch on a swapped block's weight, and the patched value it must have."""
    key = "diffusion_model.blocks.3.ffn.0.weight"
    weight = model.model.diffusion_model.blocks[3].ffn[0].weight
    patched = model.clone()
    patched.add_patches({key: (torch.full_like(weight, 0.01),)}, 1.0)
    return patched, weight.detach() + 0.01


def swapped_weights(patcher):
    return [p for block in patcher.model.diffusion_model.blocks[2:] for p in block.parameters()]


def test_on_cuda_failed_pinning_warns_with_the_bytes_and_keeps_the_weights(model, caplog):
    patched, expected = lora(model)
    offloaded = apply_offload(patched, OffloadSettings(blocks_to_swap=2))
    assert host.can_pin(offloaded) == callable(getattr(comfy.model_patcher.ModelPatcher, "pin_weight_to_device", None))
    with caplog.at_level(logging.INFO):
        offloaded._load_swapped_blocks(torch.device("cuda"))  # the CUDA load path; pinning fails here
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "could not be page-locked" in warnings[0]
        size = sum(p.numel() * p.element_size() for p in swapped_weights(offloaded))
        assert f"{size / 2**30:.2f} GiB" in warnings[0]
        assert torch.equal(offloaded.model.diffusion_model.blocks[3].ffn[0].weight, expected)  # LoRA in what swaps
    finally:
        offloaded.unpatch_model(CPU)


def test_without_in_place_pinning_the_patched_weights_get_one_pinned_copy(model, monkeypatch):
    locked = set()

    def page_lock(tensor):
        copy = tensor.clone()
        locked.add(copy.data_ptr())
        return copy

    monkeypatch.setattr(streams, "page_lock", page_lock)
    monkeypatch.setattr(streams, "is_page_locked", lambda t: t.data_ptr() in locked)
    monkeypatch.setattr(host, "can_pin", lambda patcher: False)  # ComfyUI 0.3.52
    patched, expected = lora(model)
    offloaded = apply_offload(patched, OffloadSettings(blocks_to_swap=2))
    offloaded._load_swapped_blocks(torch.device("cuda"))
    try:
        weights = swapped_weights(offloaded)
        assert weights and all(p.data_ptr() in locked for p in weights)
        assert not [p for block in offloaded.model.diffusion_model.blocks[:2] for p in block.parameters()
                    if p.data_ptr() in locked]
        assert torch.equal(offloaded.model.diffusion_model.blocks[3].ffn[0].weight, expected)
    finally:
        offloaded.unpatch_model(CPU)
