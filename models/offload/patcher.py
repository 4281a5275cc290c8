"""ComfyUI integration of block offloading: a ModelPatcher that leaves swapped blocks to the offloader.

ComfyUI's model management moves weights only through a patcher's `load`, `unpatch_model`,
`partially_unload` / `partially_load` and `detach`, and sizes memory through `model_size` /
`loaded_size`. `OffloadPatcherMixin` takes over exactly there, with no global monkeypatching:

- the swapped blocks are left out of ComfyUI's load list, so its loading, lowvram casting and
  partial unloading never move them; everything else is loaded by ComfyUI's own code (also in
  lowvram mode), module by module instead of one `model.to` over the whole model;
- LoRA / weight patches of swapped blocks are applied on the offload device at load time, so
  the patched weights are what gets swapped (ComfyUI keeps its usual backup for unpatching);
- `model_size` is the planned resident peak, so ComfyUI frees just enough memory; a partial
  (lowvram) load gets ComfyUI's budget less the prefetch window, which the swapped blocks use
  while sampling;
- blocks_to_swap "auto" (the node's 0 with vram_budget_gb 0) is chosen at the first load, from
  the free memory the patcher reports then (ComfyUI's own accounting, after it made room);
- on CUDA the swapped blocks are page-locked once at load (ComfyUI's in-place
  `pin_weight_to_device` where it has one, else the engine's pinned copy replacing the pageable
  one): one host copy either way, one console line for how much, a warning for what failed;
- a diffusion-model wrapper turns the offloader (and gradient checkpointing) on for the
  duration of this patcher's forward only: another clone of the same model sampled without
  offloading runs untouched.

The mixin is combined with whatever patcher class the MODEL already has (GGUF's, ...), and
ModelPatcher.clone() keeps the class, so LoRA loaders applied after OffloadApply keep it.
"""
import logging
from dataclasses import dataclass, field

import torch

from ...offload.checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing
from ...offload.ledger import ResidentLedger, choose_blocks_to_swap, planned_peak, swapped_indices
from ...offload.swap import BlockOffloader, OffloadConfig, PinReport, pin_blocks, place_blocks
from ...utils.errors import InputError
from ..comfy import patcher as host
from ..comfy.extension import WRAPPERS
from ..comfy.management import free_memory, inference_reserve, module_size, warn_whole_model_flag
from ..wan.blocks import transformer_blocks

KEY = "comfyui_parallel.offload"
LOAD_EVERYTHING = 1 << 62
GIB = 1024 ** 3
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OffloadSettings:
    """The node's choices; blocks_to_swap None = the fewest that fit the free memory at load time."""

    blocks_to_swap: int | None
    prefetch_blocks: int = 1
    pin_memory: bool = True
    offload_device: str = "cpu"
    gradient_checkpointing: bool = False


@dataclass
class OffloadState:
    """Settings and ledger of one OffloadApply, shared by the patcher's clones; also the forward wrapper.

    The offloader (block slots, schedule) is built once and kept; each forward only registers
    its hooks and removes them after, so other clones of the same model run untouched.
    """

    settings: OffloadSettings
    ledger: ResidentLedger = field(default_factory=ResidentLedger)
    offloader: BlockOffloader | None = field(default=None, repr=False, compare=False)
    chosen: int | None = None  # blocks_to_swap chosen at the first load when the settings leave it open

    @property
    def blocks_to_swap(self) -> int | None:
        """The swapped block count: the node's, or the one chosen at load (None before that load)."""
        return self.settings.blocks_to_swap if self.settings.blocks_to_swap is not None else self.chosen

    def config(self, compute_device: torch.device) -> OffloadConfig:
        """The engine's config. The patcher pins after applying LoRA (the patched weights are what
        gets swapped), so the engine does not pin at placement."""
        s = self.settings
        return OffloadConfig(self.blocks_to_swap or 0, s.prefetch_blocks, False, s.offload_device, compute_device)

    def offloader_for(self, blocks: torch.nn.ModuleList, device: torch.device) -> BlockOffloader:
        cached = self.offloader
        if cached is None or cached.blocks is not blocks or cached.compute_device != device:
            config = self.config(device)
            config.check(len(blocks))
            self.offloader = BlockOffloader(blocks, config, self.ledger)
        return self.offloader

    def __call__(self, executor, x, *args, **kwargs):
        """DIFFUSION_MODEL wrapper: offload (and checkpoint) the blocks for this forward only."""
        blocks = transformer_blocks(executor.class_obj)
        if self.settings.gradient_checkpointing:
            enable_gradient_checkpointing(blocks)
        offloader = self.offloader_for(blocks, x.device)
        offloader.resume()
        try:
            return executor(x, *args, **kwargs)
        finally:
            offloader.disable()
            if self.settings.gradient_checkpointing:
                disable_gradient_checkpointing(blocks)


def block_sizes(base_model) -> tuple[list[int], int]:
    """Bytes of each transformer block and of everything else in the model."""
    sizes = [module_size(block) for block in transformer_blocks(base_model)]
    return sizes, module_size(base_model) - sum(sizes)


def fewest_swapped(base_model, budget_bytes: int, prefetch_blocks: int) -> int:
    """The fewest swapped blocks whose planned peak fits `budget_bytes`; an InputError on vram_budget_gb if none."""
    sizes, other = block_sizes(base_model)
    count = choose_blocks_to_swap(sizes, prefetch_blocks, budget_bytes, other)
    if count is None:
        need = planned_peak(sizes, len(sizes), prefetch_blocks, other) / GIB
        raise InputError("vram_budget_gb", f"{max(budget_bytes, 0) / GIB:.2f} GB cannot hold the model even with "
                         f"every block swapped ({need:.2f} GB needed with prefetch_blocks {prefetch_blocks})",
                         f"at least {need:.2f}, or a lower prefetch_blocks")
    return count


class OffloadPatcherMixin(host.PatcherMixin):
    """Overrides of ModelPatcher's loading so the swapped blocks belong to the offloader alone."""

    BLOCK_MANAGER = "Offload"
    CLASS_PREFIX = "Offload"

    @property
    def offload_state(self) -> OffloadState | None:
        """None while 0.3.52's clone() runs __init__, before the clone has its attachments."""
        return getattr(self, "attachments", {}).get(KEY)

    def swapped_blocks(self) -> list[torch.nn.Module]:
        blocks = transformer_blocks(self.model)
        return [blocks[i] for i in swapped_indices(len(blocks), self.offload_state.blocks_to_swap or 0)]

    def planned_resident_bytes(self) -> int:
        sizes, other = block_sizes(self.model)
        state = self.offload_state
        return planned_peak(sizes, state.blocks_to_swap or 0, state.settings.prefetch_blocks, base_bytes=other)

    def model_size(self):
        if self.offload_state is None or self.offload_state.blocks_to_swap is None:
            return super().model_size()  # auto before the first load: ComfyUI makes room for the whole model
        return self.planned_resident_bytes()

    def _load_list(self, *args, **kwargs):
        swapped = {id(m) for block in self.swapped_blocks() for m in block.modules()}
        return host.drop_from_load_list(super()._load_list(*args, **kwargs), lambda _name, m: id(m) in swapped)

    def load(self, *args, **kwargs):
        call = host.LoadCall.of(args, kwargs)
        compute = torch.device(call.device_to if call.device_to is not None else self.load_device)
        self._choose_blocks_to_swap(compute)
        if call.full_load:  # ComfyUI would finish with model.to(device): load module by module instead
            super().load(**call.arguments(lowvram_model_memory=LOAD_EVERYTHING, full_load=False))
            move_except(self.model, call.device_to, set(self.swapped_blocks()))
        else:  # lowvram: the prefetch window needs its share of ComfyUI's budget while sampling
            budget = max(0, call.lowvram_model_memory - self.window_bytes())
            super().load(**call.arguments(lowvram_model_memory=budget))
        self._load_swapped_blocks(compute)

    def _choose_blocks_to_swap(self, compute: torch.device) -> None:
        """blocks_to_swap auto: the fewest that fit the free memory the patcher reports now, once."""
        state = self.offload_state
        if state.blocks_to_swap is not None:
            return
        budget = free_memory(compute, self) - inference_reserve()
        state.chosen = fewest_swapped(self.model, budget, state.settings.prefetch_blocks)
        log.info("offload: %d blocks swapped, chosen at load from %.2f GB free on %s (planned resident %.2f MB)",
                 state.chosen, budget / GIB, compute, self.planned_resident_bytes() / 2**20)

    def _load_swapped_blocks(self, compute: torch.device) -> None:
        """Put the swapped blocks on the offload device, patch their weights there, pin them, book the window."""
        state = self.offload_state
        place_blocks(transformer_blocks(self.model), state.config(compute), swapped_only=True)
        pin = state.settings.pin_memory and compute.type == "cuda"
        in_place, report = pin and host.can_pin(self), PinReport()
        for module, keys in self._swapped_modules_and_keys():
            if host.weights_patched(module):
                continue
            for key in keys:
                host.patch_weight(self, key)
                if in_place:
                    weight = getattr(module, key.rsplit(".", 1)[1])  # after patching: the patched weight
                    size = weight.numel() * weight.element_size()
                    if host.pin_weight(self, key):
                        report.pinned += size
                    else:
                        report.failed += size
            host.mark_weights_patched(module)
        if in_place:
            report.say()
        elif pin:  # no in-place pinning in this ComfyUI: a pinned copy replaces the pageable one
            pin_blocks(self.swapped_blocks(), compute)
        host.add_loaded_bytes(self, self.window_bytes())

    def _swapped_modules_and_keys(self):
        """(module, its own parameters' state-dict keys) for every module inside a swapped block."""
        swapped = {id(block) for block in self.swapped_blocks()}
        for block_name, block in self.model.named_modules():
            if id(block) in swapped:
                for name, module in block.named_modules(prefix=block_name):
                    yield module, [f"{name}.{param}" for param, _ in module.named_parameters(recurse=False)]

    def window_bytes(self) -> int:
        """Planned bytes of the swapped blocks in flight at once (prefetch window)."""
        sizes, _ = block_sizes(self.model)
        state = self.offload_state
        swapped = state.blocks_to_swap or 0
        resident = sum(sizes[: len(sizes) - swapped])
        return planned_peak(sizes, swapped, state.settings.prefetch_blocks) - resident

    def unpatch_model(self, device_to=None, unpatch_weights=True, *args, **kwargs):
        super().unpatch_model(None, unpatch_weights, *args, **kwargs)
        if unpatch_weights and device_to is not None:
            move_except(self.model, device_to, set(self.swapped_blocks()))
            host.set_model_device(self, device_to)


def move_except(module: torch.nn.Module, device, skip: set) -> None:
    """`module.to(device)` for everything but the modules in `skip` (and their children)."""
    if module in skip:
        return
    module._apply(lambda t: t.to(device), recurse=False)
    for child in module.children():
        move_except(child, device, skip)


def apply_offload(model, settings: OffloadSettings):
    """A clone of `model` (a ModelPatcher) whose swapped blocks are offloaded as `settings` say.

    A Dynamic VRAM MODEL (ComfyUI 0.38+) gives way to a non-dynamic patcher: the offloader
    decides where the swapped blocks live, and their LoRA must be in the weights it copies.
    """
    transformer_blocks(model.model)  # refuse unsupported models before cloning
    host.refuse_other_block_manager(model, OffloadPatcherMixin)
    warn_whole_model_flag("offload")
    model = host.non_dynamic(model, "offload", "the offloader moves the swapped blocks itself, LoRA applied")
    patched = host.as_pack_patcher(model, OffloadPatcherMixin)
    state = OffloadState(settings, ResidentLedger(base_bytes=block_sizes(patched.model)[1]))
    patched.set_attachments(KEY, state)
    patched.remove_wrappers_with_key(WRAPPERS.DIFFUSION_MODEL, KEY)
    patched.add_wrapper_with_key(WRAPPERS.DIFFUSION_MODEL, KEY, state)
    if settings.blocks_to_swap is None:
        log.info("offload: blocks_to_swap chosen at load from the free memory then, prefetch %d",
                 settings.prefetch_blocks)
    else:
        log.info("offload: %d blocks swapped, prefetch %d, planned resident %.2f MB", settings.blocks_to_swap,
                 settings.prefetch_blocks, patched.planned_resident_bytes() / 2**20)
    return patched
