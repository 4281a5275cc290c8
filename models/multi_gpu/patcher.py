"""ComfyUI integration of the Multi-GPU modes: a ModelPatcher that places a model over devices.

ComfyUI's model management moves weights only through a patcher's `load`, `unpatch_model`,
`partially_unload` / `partially_load` and `detach`, and sizes memory through `model_size` and
`loaded_size`. `MultiGPUPatcherMixin` takes over exactly there (no global monkeypatching):

- block_distribution: `load` plans the placement from the free memory then (models/multi_gpu/
  load_plan.py: not at ComfyUI's earlier `model_size` call, and again when the free memory
  changed), places the blocks planned off the main device with `parallel.placement.
  distribute_blocks` (each moves once, straight to its device) and applies their LoRA patches
  there; those blocks are left out of ComfyUI's own load list, so it never pulls them back. The
  main device's blocks stay in that list with the embeddings and head: ComfyUI loads, patches
  and partially unloads them (its lowvram path) as any module, and sees them as the model's size.
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

from ...parallel.devices import home_device
from ...parallel.placement import distribute_blocks
from ...parallel.plan import module_bytes
from . import load_plan
from ..comfy import patcher as host
from ..comfy.management import warn_whole_model_flag
from ..wan.family import block_index_of, wan_blocks, works_between_blocks
from .remote import refuse_patched

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
    remote: object = None  # distributed: models/multi_gpu/remote.py RemoteWorkers (ranks on other machines)

    @property
    def main_device(self) -> torch.device:
        """Where ComfyUI loads the model and feeds its inputs: the first device, as its tensors report it."""
        return home_device(self.devices[0])


_PLACEMENTS: "weakref.WeakKeyDictionary[torch.nn.Module, load_plan.Placement]" = weakref.WeakKeyDictionary()


def placement_of(base_model: torch.nn.Module) -> load_plan.Placement | None:
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
        elsewhere = self._blocks_elsewhere()
        return host.drop_from_load_list(loading, lambda name, _module: block_index_of(name) in elsewhere)

    def _blocks_elsewhere(self) -> set[int]:
        """Blocks ComfyUI's own loading leaves alone: all of them in distributed mode (and before a
        placement exists), else those planned off the main device."""
        count = len(wan_blocks(self.model.diffusion_model))
        placement = _PLACEMENTS.get(self.model)
        if self._mode() == "distributed" or placement is None:
            return set(range(count))
        return set(range(count)) - placement.main_blocks()

    def _sizes(self) -> tuple[list[int], int]:
        """(bytes of each block, bytes of the rest of the model: embeddings, head)."""
        sizes = [module_bytes(b) for b in wan_blocks(self.model.diffusion_model)]
        return sizes, module_bytes(self.model) - sum(sizes)

    def _capacities(self, placement) -> list[int]:
        sizes, _ = self._sizes()
        devices = list(self.multi_gpu.devices)
        held = load_plan.held_bytes(placement, sizes, self.loaded_size(), len(devices))
        return load_plan.capacities(devices, self.multi_gpu.memory_reserve_bytes, held)

    def model_size(self):
        if not self._manages_blocks():
            return super().model_size()
        sizes, rest = self._sizes()
        if self._mode() == "distributed":
            return rest
        placement = _PLACEMENTS.get(self.model)
        main = placement.main_blocks() if placement is not None else \
            load_plan.estimate_main_blocks(sizes, self._capacities(None), rest)
        return rest + sum(sizes[i] for i in main)

    def load(self, *args, **kwargs):
        if not self._manages_blocks():
            return super().load(*args, **kwargs)
        call = host.LoadCall.of(args, kwargs)
        if self._mode() == "distributed":
            refuse_patched(self.multi_gpu.remote, patched=bool(self.patches))
        with self.use_ejected():
            self._place_blocks(call.device_to)
            budget = call.lowvram_model_memory
            budget = 1e32 if call.full_load or budget <= 0 else budget
            # full_load=False: ComfyUI's full load ends with model.to(device), which would pull the blocks back
            super().load(**call.arguments(lowvram_model_memory=budget, full_load=False))

    def _place_blocks(self, device_to) -> None:
        """Put the blocks planned off the main device there and apply their LoRA patches there (ComfyUI's
        own load does both for the main device's blocks); distributed: patch them where they are."""
        blocks = wan_blocks(self.model.diffusion_model)
        if self._mode() != "block_distribution":
            for index, block in enumerate(blocks):
                self._patch_block(index, block, None)
            return
        placement = self._placement_now()
        if placement.distribution is None:
            each = works_between_blocks(self.model.diffusion_model)
            placement.distribution = distribute_blocks(blocks, list(self.multi_gpu.devices), placement.assignment,
                                                       device_to, each, leave_on_main=True)
            log.info("block_distribution:\n%s", placement.distribution.describe())
        for index in sorted(set(range(len(blocks))) - placement.main_blocks()):
            self._patch_block(index, blocks[index], placement.distribution.block_devices[index])

    def _placement_now(self) -> load_plan.Placement:
        """The placement for this load: the current one, or planned now from the free memory."""
        current = _PLACEMENTS.get(self.model)
        if current is None:
            sizes, rest = self._sizes()
            current = _PLACEMENTS[self.model] = load_plan.plan(sizes, self._capacities(None), rest)
        return current

    def partially_load(self, device_to, extra_memory=0, *args, **kwargs):
        """ComfyUI's load of a model it holds: placed again first when the free memory changed (see
        load_plan.needs_new_plan), through ComfyUI's own full unpatch, so LoRA and lowvram state stay right."""
        current = _PLACEMENTS.get(self.model)
        if self._mode() == "block_distribution" and current is not None and current.distribution is not None:
            sizes, rest = self._sizes()
            if load_plan.needs_new_plan(current, sizes, self._capacities(current), rest):
                log.info("block_distribution: the devices' free memory changed since the blocks were placed; "
                         "placing them again")
                extra_memory += self.loaded_size()
                self.unpatch_model(self.offload_device, unpatch_weights=True)
        return super().partially_load(device_to, extra_memory, *args, **kwargs)

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
