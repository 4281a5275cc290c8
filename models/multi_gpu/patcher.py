"""ComfyUI integration of the Multi-GPU modes: a ModelPatcher that places a model over devices.

ComfyUI's model management moves weights only through a patcher's `load`, `unpatch_model`,
`partially_unload` / `partially_load` and `detach`, and sizes memory through `model_size` and
`loaded_size`. `MultiGPUPatcherMixin` takes over exactly there (no global monkeypatching):

- block_distribution: the transformer blocks are left out of ComfyUI's own load list; `load`
  places them with `parallel.placement.distribute_blocks` on their planned devices (each
  block moves once, straight to its device) and applies LoRA patches to each block on its
  device; the rest of the model (embeddings, head) is loaded by ComfyUI's own code. ComfyUI
  sees only the main device's share as the model's size, so it never pulls the blocks back.
- distributed: the blocks stay on the offload device (workers compute them from shared
  memory); only embeddings and head are loaded on the main device.
- none / data_parallel: ComfyUI's own loading on the main device; data_parallel replicates
  the loaded model per call through a diffusion-model wrapper (models/multi_gpu/data_parallel.py).

The mixin is combined with whatever patcher class the MODEL already has (GGUF's, ...), and
ModelPatcher.clone() keeps the class, so LoRA loaders applied after still keep the placement.
"""
import logging
import weakref
from dataclasses import dataclass

import torch

from ...parallel.devices import free_bytes, storage_device
from ...parallel.placement import distribute_blocks
from ...parallel.plan import module_bytes, plan_blocks
from ..comfy import patcher as host
from ..comfy.management import warn_whole_model_flag
from ..wan.family import block_index_of, wan_blocks, works_between_blocks

MANAGED_MODES = ("block_distribution", "distributed")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultiGPUSettings:
    """A resolved parallelism choice (never 'auto') for one MODEL."""

    parallelism_type: str
    devices: tuple[torch.device, ...]
    memory_reserve_bytes: int = 0
    offload_after_run: bool = False
    reason: str = ""
    weight_sharding: str = "replicate"  # distributed: replicate or fsdp (models/multi_gpu/sharding.py)

    @property
    def main_device(self) -> torch.device:
        """Where ComfyUI loads the model and feeds its inputs: the first device (simulated cpu:N -> cpu)."""
        return storage_device(self.devices[0])


@dataclass
class Placement:
    """The block placement of one BaseModel (shared by all its patcher clones, like its weights)."""

    assignment: list[int]
    device_bytes: list[int]
    distribution: object = None  # parallel.placement.BlockDistribution once the blocks are placed


_PLACEMENTS: "weakref.WeakKeyDictionary[torch.nn.Module, Placement]" = weakref.WeakKeyDictionary()


def placement_of(base_model: torch.nn.Module) -> Placement | None:
    """The current block placement of a BaseModel, None when its blocks are not distributed."""
    return _PLACEMENTS.get(base_model)


class MultiGPUPatcherMixin(host.PatcherMixin):
    """Overrides of ModelPatcher's loading entry points; see the module docstring."""

    BLOCK_MANAGER = "Multi-GPU"
    CLASS_PREFIX = "MultiGPU"
    CARRIED = ("multi_gpu",)

    multi_gpu: MultiGPUSettings

    def _mode(self) -> str:
        settings = getattr(self, "multi_gpu", None)  # absent while 0.3.52's clone() runs __init__
        return settings.parallelism_type if settings is not None else "none"

    def _manages_blocks(self) -> bool:
        return self._mode() in MANAGED_MODES

    def _load_list(self, *args, **kwargs):
        loading = super()._load_list(*args, **kwargs)
        if not self._manages_blocks():
            return loading
        return host.drop_from_load_list(loading, lambda name, _module: block_index_of(name) is not None)

    def _plan(self) -> Placement:
        """This model's placement: reused while it lasts, else planned from free memory now."""
        current = _PLACEMENTS.get(self.model)
        if current is not None:
            return current
        blocks = wan_blocks(self.model.diffusion_model)
        sizes = [module_bytes(b) for b in blocks]
        reserve = self.multi_gpu.memory_reserve_bytes
        capacities = [max(free_bytes(d) - reserve, 0) for d in self.multi_gpu.devices]
        rest = module_bytes(self.model) - sum(sizes)
        plan = plan_blocks(sizes, capacities, first_device_extra=rest)
        placement = Placement(plan.assignment, plan.device_bytes)
        _PLACEMENTS[self.model] = placement
        return placement

    def model_size(self):
        if not self._manages_blocks():
            return super().model_size()
        blocks = wan_blocks(self.model.diffusion_model)
        rest = module_bytes(self.model) - sum(module_bytes(b) for b in blocks)
        if self._mode() == "distributed":
            return rest
        placement = self._plan()
        return rest + sum(module_bytes(b) for b, d in zip(blocks, placement.assignment) if d == 0)

    def load(self, *args, **kwargs):
        if not self._manages_blocks():
            return super().load(*args, **kwargs)
        call = host.LoadCall.of(args, kwargs)
        with self.use_ejected():
            on_main = self._place_blocks(call.device_to)
            budget = call.lowvram_model_memory
            budget = 1e32 if call.full_load or budget <= 0 else budget
            # full_load=False: ComfyUI's full load ends with model.to(device), which would pull the blocks back
            super().load(**call.arguments(lowvram_model_memory=budget, full_load=False))
            host.add_loaded_bytes(self, on_main)

    def _place_blocks(self, device_to) -> int:
        """Put the blocks where the mode wants them and apply LoRA patches there; bytes left on device_to."""
        blocks = wan_blocks(self.model.diffusion_model)
        if self._mode() == "block_distribution":
            placement = self._plan()
            if placement.distribution is None:
                devices = list(self.multi_gpu.devices)
                each = works_between_blocks(self.model.diffusion_model)
                placement.distribution = distribute_blocks(blocks, devices, placement.assignment, device_to, each)
                log.info("block_distribution:\n%s", placement.distribution.describe())
            block_devices = placement.distribution.block_devices
        else:
            block_devices = [None] * len(blocks)
        for index, (block, device) in enumerate(zip(blocks, block_devices)):
            self._patch_block(index, block, device)
        if self._mode() == "distributed":
            return 0
        return sum(module_bytes(b) for b, a in zip(blocks, self._plan().assignment) if a == 0)

    def _patch_block(self, index: int, block: torch.nn.Module, device) -> None:
        """Apply this patcher's weight patches (LoRA) to one block, on the block's own device, once."""
        if host.weights_patched(block):
            return
        for key in [k for k in self.patches if block_index_of(k) == index]:
            host.unpin_weight(self, key)
            host.patch_weight(self, key, device)
        host.mark_weights_patched(block)

    def unpatch_model(self, device_to=None, unpatch_weights=True, *args, **kwargs):
        if unpatch_weights and self._manages_blocks():
            placement = _PLACEMENTS.pop(self.model, None)
            if placement is not None and placement.distribution is not None:
                placement.distribution.undo()
            for block in wan_blocks(self.model.diffusion_model):
                host.clear_weights_patched(block)
        return super().unpatch_model(device_to, unpatch_weights, *args, **kwargs)


def as_multi_gpu(model_patcher, settings: MultiGPUSettings):
    """A clone of `model_patcher` that loads according to `settings` (the input is left untouched)."""
    if settings.parallelism_type in MANAGED_MODES:
        warn_whole_model_flag(settings.parallelism_type)
    clone = host.as_pack_patcher(model_patcher, MultiGPUPatcherMixin)
    clone.multi_gpu = settings
    host.set_load_device(clone, settings.main_device)
    return clone
