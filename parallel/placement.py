"""Block distribution: transformer blocks spread over devices, activations hopping between them.

Each block moves to its planned device; a forward pre-hook moves every tensor in the
block's args / kwargs (nested in tuples, lists, dicts) to that device, and a hook on the
last block brings its output back to the main device, so the model's own code around
the blocks (embeddings, head) runs unchanged. A model whose forward works on the hidden
state between blocks (Wan VACE adds its skip, S2V its audio) gets `return_each_block`: every
block's output comes back to the main device, where that code runs. Tensors shared by every
block (context, rotary frequencies, time embedding) are moved once per device per forward,
not per block. `undo()` removes the hooks and puts every block back where it was.
`ran_on` records which device each block ran on.
"""
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .devices import same_device

RECORD_LIMIT = 10_000  # ran_on keeps at most this many recent entries


def append_bounded(records: list, item) -> None:
    """Append to an engine's run record, dropping the oldest half past RECORD_LIMIT entries."""
    records.append(item)
    if len(records) > RECORD_LIMIT:
        del records[: len(records) - RECORD_LIMIT // 2]


def first_tensor_device(module: nn.Module) -> torch.device | None:
    """Device of a module's first parameter or buffer (None for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def move_to(obj, device: torch.device, cache: dict | None = None):
    """`obj` with every tensor (nested in tuples, lists, dicts) on `device`.

    Containers are rebuilt only when something inside moved, so identity-sensitive objects
    (ComfyUI's transformer_options) pass through untouched when nothing needs to move.
    `cache` maps (id(tensor), device) -> (weak ref to tensor, moved copy).
    """
    if isinstance(obj, torch.Tensor):
        return _move_tensor(obj, device, cache)
    if isinstance(obj, dict):
        moved = {key: move_to(value, device, cache) for key, value in obj.items()}
        if all(moved[key] is obj[key] for key in obj):
            return obj
        copy = obj.copy()
        copy.update(moved)
        return copy
    if isinstance(obj, (list, tuple)):
        moved = [move_to(item, device, cache) for item in obj]
        if all(new is old for new, old in zip(moved, obj)):
            return obj
        if hasattr(obj, "_fields"):
            return type(obj)(*moved)
        return type(obj)(moved)
    return obj


def _move_tensor(tensor: torch.Tensor, device: torch.device, cache: dict | None) -> torch.Tensor:
    """The tensor on `device`; with a cache, a tensor seen before is moved only once.

    The cache holds the source weakly: when the source is freed (an activation that flowed
    on), its entry and moved copy go too, so only long-lived shared inputs stay cached.
    """
    if same_device(tensor.device, device):
        return tensor
    if cache is None:
        return tensor.to(device)
    key = (id(tensor), str(device))
    hit = cache.get(key)
    if hit is not None and hit[0]() is tensor:
        return hit[1]
    moved = tensor.to(device)
    cache[key] = (weakref.ref(tensor, lambda _ref, k=key: cache.pop(k, None)), moved)
    return moved


@dataclass
class BlockDistribution:
    """Blocks placed on devices; `ran_on` records (block index, device) per block forward."""

    blocks: nn.ModuleList
    devices: list[torch.device]
    block_devices: list[torch.device]
    main_device: torch.device
    original_devices: list[torch.device | None]
    ran_on: list = field(default_factory=list)
    handles: list = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def record(self, index: int) -> None:
        """Note that block `index` ran on its device."""
        append_bounded(self.ran_on, (index, self.block_devices[index]))

    def pre_hook(self, index: int):
        """Forward pre-hook of block `index`: args and kwargs onto the block's device."""
        device = self.block_devices[index]

        def hook(_module, args, kwargs):
            if index == 0:
                self.cache.clear()
            self.record(index)
            return move_to(args, device, self.cache), move_to(kwargs, device, self.cache)

        return hook

    def last_hook(self, _module, _args, _kwargs, output):
        """Forward hook of the last block: its output back on the main device."""
        self.cache.clear()
        return move_to(output, self.main_device)

    @staticmethod
    def return_hook(main_device: torch.device):
        """Forward hook of a block before the last (return_each_block): its output back on the main device."""
        return lambda _module, _args, _kwargs, output: move_to(output, main_device)

    def undo(self) -> None:
        """Remove the hooks and move every block back to the device it was on."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.cache.clear()
        for block, device in zip(self.blocks, self.original_devices):
            if device is not None:
                block.to(device)

    def describe(self) -> str:
        """Which blocks sit on which device, one line per contiguous run."""
        lines, start = [], 0
        for i in range(1, len(self.block_devices) + 1):
            if i == len(self.block_devices) or self.block_devices[i] != self.block_devices[start]:
                lines.append(f"blocks {start}-{i - 1} on {self.block_devices[start]}")
                start = i
        return "\n".join(lines)


def distribute_blocks(blocks: nn.ModuleList, devices: list[torch.device], assignment: list[int],
                      main_device: torch.device, return_each_block: bool = False,
                      leave_on_main: bool = False) -> BlockDistribution:
    """Move block i to devices[assignment[i]] and hook it so its inputs follow; reversible.

    With `return_each_block` every block's output returns to the main device (else only the last's).
    With `leave_on_main` the blocks planned on devices[0] are hooked but not moved, neither now nor
    by `undo()`: whoever loads the model (ComfyUI) places and unloads those. A later entry naming
    the same device (a shared device) is placed here like any other.
    """
    if len(assignment) != len(blocks):
        raise ValueError(f"assignment has {len(assignment)} entries for {len(blocks)} blocks")
    if any(not 0 <= a < len(devices) for a in assignment):
        raise ValueError(f"assignment names a device outside 0..{len(devices) - 1}: {assignment}")
    block_devices = [torch.device(devices[a]) for a in assignment]
    moved = [not (leave_on_main and a == 0) for a in assignment]
    dist = BlockDistribution(blocks, [torch.device(d) for d in devices], block_devices, torch.device(main_device),
                             [first_tensor_device(b) if m else None for b, m in zip(blocks, moved)])
    for index, (block, device) in enumerate(zip(blocks, block_devices)):
        if moved[index]:
            block.to(device)
        dist.handles.append(block.register_forward_pre_hook(dist.pre_hook(index), with_kwargs=True))
        if return_each_block and index < len(blocks) - 1:
            dist.handles.append(block.register_forward_hook(dist.return_hook(dist.main_device), with_kwargs=True))
    if len(blocks):
        dist.handles.append(blocks[-1].register_forward_hook(dist.last_hook, with_kwargs=True))
    return dist
