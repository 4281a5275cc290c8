"""Contract tests: the pack's ModelPatcher overrides driven with ComfyUI 0.38's call shapes.

0.38 cannot be installed here (and its Dynamic VRAM needs an NVIDIA GPU), so `Dynamic038`
re-enacts what its `ModelPatcherDynamic` does to the pack, following Comfy-Org/ComfyUI
comfy/model_patcher.py at commit 08d0e510f4e539a1db39072589817136ac6cfa7d:
- `partially_load(device_to, ...)` calls `self.load(device_to, dirty=dirty)`;
- `load(..., dirty=False)` asserts no force_patch_weights / full_load, reads
  `_load_list(for_dynamic=True, default_device=device_to)` (6-field entries), moves no weight and
  applies LoRA at cast time (`comfy_cast_weights` + a lowvram patch), never into the parameters;
- `clone(disable_dynamic=False, model_override=None, force_deepcopy=False)` builds a plain
  `ModelPatcher` when disable_dynamic (so a subclass is dropped); `get_non_dynamic_delegate()`;
- `pin_weight_to_device` / `unpin_weight` raise; `patch_model(load_weights=True)` asserts;
  `register_load_device(device)` after a device change.
Everything else is the installed ComfyUI's (its loader, sampler and model management).
"""
import logging

import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402

from comfyui_parallel.models.comfy import patcher as host  # noqa: E402
from comfyui_parallel.models.multi_gpu.patcher import MultiGPUPatcherMixin  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from comfyui_parallel.models.offload.patcher import OffloadSettings, apply_offload  # noqa: E402
from multi_gpu_helpers import TINY_WAN, sample  # noqa: E402

ModelPatcher = comfy.model_patcher.ModelPatcher
LORA_KEY = "diffusion_model.blocks.0.self_attn.q.weight"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # split batches and sharded attention round differently in the last bits


class Dynamic038(ModelPatcher):
    """ModelPatcherDynamic's behaviour towards subclasses and callers, at 0.38 (see the module docstring)."""

    def is_dynamic(self):
        return True

    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
        n = super().clone()
        if disable_dynamic:
            n.__class__ = ModelPatcher  # class_ = ModelPatcher: the caller's subclass is gone
        return n

    def _load_list(self, for_dynamic=False, default_device=None):
        entries = super()._load_list()
        if not for_dynamic:
            return entries
        dynamic = []
        for *sizes, name, module, params in entries:  # (size, ...) on 0.3.52, (offload, size, ...) later
            dynamic.append((sizes[0] >= 64 * 1024, -sizes[0], sizes[-1], name, module, params))
        return dynamic

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, dirty=False):
        assert not force_patch_weights and not full_load
        for *_, name, module, _params in self._load_list(for_dynamic=True, default_device=device_to):
            if hasattr(module, "comfy_cast_weights"):
                module.comfy_cast_weights = True
                for param in ("weight", "bias"):
                    key = f"{name}.{param}"
                    setattr(module, f"{param}_function",
                            [comfy.model_patcher.LowVramPatch(key, self.patches)] if key in self.patches else [])
        self.model.device = device_to
        self.model.current_weight_patches_uuid = self.patches_uuid

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        with self.use_ejected(skip_and_inject_on_exit_only=True):
            current = self.model.current_weight_patches_uuid
            dirty = current is not None and current != self.patches_uuid
            self.unpatch_model(self.offload_device, unpatch_weights=False)
            self.patch_model(load_weights=False)
            self.load(device_to, dirty=dirty)
        return None

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        assert not load_weights
        return super().patch_model(load_weights=load_weights, force_patch_weights=force_patch_weights)

    def pin_weight_to_device(self, key):
        raise RuntimeError("pin_weight_to_device invalid for dymamic weight loading")

    def unpin_weight(self, key):
        raise RuntimeError("unpin_weight invalid for dymamic weight loading")

    def register_load_device(self, device):
        self.registered = getattr(self, "registered", []) + [device]

    def get_non_dynamic_delegate(self):
        return self.clone(disable_dynamic=True)


def with_lora(model):
    """A LoRA-like weight patch (a 'diff'), as ComfyUI's LoRA loaders add them."""
    clone = model.clone()
    weight = clone.model.state_dict()[LORA_KEY]
    clone.add_patches({LORA_KEY: ("diff", (torch.full_like(weight, 0.05),))}, 1.0)
    return clone


@pytest.fixture
def wan(models_cache):
    def load(cls=ModelPatcher):
        model = comfy.sd.load_diffusion_model(str(models_cache / "diffusion_models" / TINY_WAN))
        model.__class__ = cls
        return with_lora(model)

    return load


@pytest.fixture
def reference(wan):
    return sample(wan())


def multi_gpu(model, mode: str):
    return apply_multi_gpu(model, resolve(model, MultiGPURequest(mode, "cpu,cpu")))


def test_the_stand_in_is_dynamic_and_keeps_lora_out_of_the_parameters(wan, reference):
    model = wan(Dynamic038)
    before = model.model.state_dict()[LORA_KEY].clone()
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    assert torch.equal(model.model.state_dict()[LORA_KEY], before), "LoRA went into the parameters"


def test_none_keeps_the_dynamic_patcher_and_its_load_takes_dirty(wan, reference, caplog):
    with caplog.at_level(logging.INFO):
        model = multi_gpu(wan(Dynamic038), "none")
    assert host.is_dynamic(model) and isinstance(model, Dynamic038)
    lines = [r.getMessage() for r in caplog.records if "Dynamic VRAM" in r.getMessage()]
    assert len(lines) == 1 and "none" in lines[0] and "keeps it" in lines[0]
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)


@pytest.mark.parametrize("mode", ["data_parallel", "block_distribution", "distributed"])
def test_modes_that_move_weights_convert_with_one_line_and_lora_reaches_them(wan, reference, caplog, mode):
    with caplog.at_level(logging.INFO):
        model = multi_gpu(wan(Dynamic038), mode)
    lines = [r.getMessage() for r in caplog.records if "Dynamic VRAM" in r.getMessage()]
    assert len(lines) == 1 and mode in lines[0] and "non-dynamic" in lines[0]
    assert not host.is_dynamic(model) and isinstance(model, host.PatcherMixin)
    try:
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    finally:
        runner = runner_of(model)
        if runner is not None:
            runner.close()


def test_offload_converts_and_pins_nothing_it_cannot(wan, reference, caplog):
    with caplog.at_level(logging.INFO):
        model = apply_offload(wan(Dynamic038), OffloadSettings(blocks_to_swap=1, pin_memory=True))
    assert sum("Dynamic VRAM" in r.getMessage() for r in caplog.records) == 1
    assert not host.is_dynamic(model)
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)


def test_clone_with_0_38_keywords_keeps_the_mixin_and_settings(wan):
    model = multi_gpu(wan(Dynamic038), "none")
    plain = model.clone(disable_dynamic=True, model_override=None, force_deepcopy=False)
    assert isinstance(plain, host.PatcherMixin) and not host.is_dynamic(plain)
    assert plain.multi_gpu == model.multi_gpu


def test_block_managers_read_the_dynamic_load_list(wan):
    model = multi_gpu(wan(ModelPatcher), "block_distribution")
    model.__class__ = host.with_mixin(Dynamic038, MultiGPUPatcherMixin)
    everything = Dynamic038._load_list(model, for_dynamic=True)
    kept = model._load_list(for_dynamic=True, default_device=None)
    assert {len(entry) for entry in kept} == {6}
    assert not [name for *_, name, _m, _p in kept if name.startswith("diffusion_model.blocks.")]
    assert 0 < len(kept) < len(everything)


@pytest.mark.parametrize("entry", [(10, "a.b", torch.nn.Linear(1, 1), ["weight"]),
                                   (12, 10, "a.b", torch.nn.Linear(1, 1), {}),
                                   (True, -12, 10, "a.b", torch.nn.Linear(1, 1), {})])
def test_load_list_entries_of_every_release(entry):
    name, module = host.entry_name_and_module(entry)
    assert name == "a.b" and isinstance(module, torch.nn.Linear)


def test_load_calls_pass_on_arguments_the_pack_does_not_know():
    call = host.LoadCall.of((torch.device("cpu"),), {"dirty": True, "lowvram_model_memory": 5})
    assert call.lowvram_model_memory == 5 and call.extra == {"dirty": True}
    assert call.arguments(full_load=False) == {"device_to": torch.device("cpu"), "lowvram_model_memory": 5,
                                               "force_patch_weights": False, "full_load": False, "dirty": True}


def test_the_loader_passes_disable_dynamic_only_where_comfyui_takes_it():
    def load_diffusion_model_038(unet_path, model_options={}, disable_dynamic=False):
        return disable_dynamic

    def load_diffusion_model_0375(unet_path, model_options={}):
        return None

    assert host.accepts(load_diffusion_model_038, "disable_dynamic")
    assert not host.accepts(load_diffusion_model_0375, "disable_dynamic")


def test_a_new_load_device_is_registered_with_the_dynamic_patcher(wan):
    model = wan(Dynamic038)
    host.set_load_device(model, torch.device("cpu"))
    assert model.registered == [torch.device("cpu")]
    assert not host.can_pin(model) and host.pin_weight(model, LORA_KEY) is False
