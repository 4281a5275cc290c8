"""Offloading inside ComfyUI: real sampling runs through its model management with a tiny Wan.

On the plain CPU every copy is a no-op, so the schedule is proven by recording: a spy on the
offloader's `transfer`, on `nn.Module.to` / `_apply` (how ComfyUI moves weights), forward
pre-hooks on the blocks, and the ledger's events. On a simulated GPU (cpu:1, holding tensors of
its own) the swap path really copies and a block left on the host would fail.
"""
import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402
from devtools.demo_models import tiny_wan_state_dict  # noqa: E402

from comfyui_parallel.models.offload.patcher import KEY, OffloadSettings, apply_offload, block_sizes  # noqa: E402
from comfyui_parallel.offload import swap  # noqa: E402
from comfyui_parallel.offload.ledger import planned_peak  # noqa: E402
from comfyui_parallel.parallel.monitor import MemoryMonitor  # noqa: E402

NUM_BLOCKS = 4


@pytest.fixture(scope="module")
def state_dict():
    return tiny_wan_state_dict(num_layers=NUM_BLOCKS, seed=3)


@pytest.fixture
def model(state_dict):
    """A fresh ComfyUI Wan MODEL per test (ComfyUI's own loader; no weights shared with other tests)."""
    comfy.model_management.unload_all_models()
    return comfy.sd.load_diffusion_model_state_dict(dict(state_dict))


def sample(model, seed=7):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    latent = torch.zeros(1, 16, 1, 8, 8)
    positive = [[torch.randn(1, 6, 4096), {}]]
    negative = [[torch.randn(1, 6, 4096), {}]]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, 3, 4.0, "euler", "simple", positive, negative, latent, seed=seed,
                               disable_pbar=True)


@pytest.mark.parametrize("blocks_to_swap", [0, 2, NUM_BLOCKS])
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_same_latent_as_plain_model(model, blocks_to_swap, prefetch):
    expected = sample(model)
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap, prefetch))
    assert torch.equal(sample(offloaded), expected)
    blocks = offloaded.model.diffusion_model.blocks
    assert swap.active_offloader(blocks) is None
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in blocks)


@pytest.mark.parametrize("blocks_to_swap, prefetch", [(0, 1), (2, 0), (2, 1), (NUM_BLOCKS, 2)])
def test_same_latent_on_a_simulated_gpu(model, blocks_to_swap, prefetch, simulated_devices, monkeypatch):
    """ComfyUI loads onto cpu:1, a simulated device holding its own tensors: the swapped blocks really
    are copied there for each forward (a block computing on host weights would mix devices and fail)."""
    expected = sample(model)
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap, prefetch))
    offloaded.load_device = torch.device("cpu", 1)
    copies, real_transfer = [], swap.transfer

    def spy(tensor, device, non_blocking=False):
        moved = real_transfer(tensor, device, non_blocking)
        copies.append((str(moved.device), moved is not tensor))
        return moved

    monkeypatch.setattr(swap, "transfer", spy)
    assert torch.equal(sample(offloaded), expected)
    blocks = offloaded.model.diffusion_model.blocks
    assert {str(p.device) for b in blocks[:NUM_BLOCKS - blocks_to_swap] for p in b.parameters()} <= {"cpu:1"}
    assert {str(p.device) for b in blocks[NUM_BLOCKS - blocks_to_swap:] for p in b.parameters()} <= {"cpu"}
    assert (len(copies) > 0) == (blocks_to_swap > 0) and set(copies) <= {("cpu:1", True)}
    blocks = offloaded.model.diffusion_model.blocks
    assert swap.active_offloader(blocks) is None
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in blocks)


class Recorder:
    """Timeline of block starts, transfers, ledger bookings; every Module.to / _apply target."""

    def __init__(self, monkeypatch, blocks, ledger):
        self.timeline, self.moved_modules = [], []
        self.owner = {t.data_ptr(): i for i, b in enumerate(blocks) for t in [*b.parameters(), *b.buffers()]}
        self.tensor_counts = [len([*b.parameters(), *b.buffers()]) for b in blocks]
        real_transfer, real_apply, real_to = swap.transfer, torch.nn.Module._apply, torch.nn.Module.to
        monkeypatch.setattr(swap, "transfer", lambda t, *a, **k: self._copy(real_transfer, t, *a, **k))
        monkeypatch.setattr(torch.nn.Module, "_apply", lambda m, *a, **k: self._moved(real_apply, m, *a, **k))
        monkeypatch.setattr(torch.nn.Module, "to", lambda m, *a, **k: self._moved(real_to, m, *a, **k))
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda m, a, i=index: self.timeline.append(("start", i)))
            for inner in block.children():  # the block's own computation, after every block hook
                inner.register_forward_pre_hook(lambda m, a, i=index: self.timeline.append(("compute", i)))
        ledger.listeners.append(lambda _: self._booked(ledger))
        self.seen_events = len(ledger.events)

    def _copy(self, real, tensor, *args, **kwargs):
        self.timeline.append(("copy", self.owner.get(tensor.data_ptr())))
        return real(tensor, *args, **kwargs)

    def _moved(self, real, module, *args, **kwargs):
        self.moved_modules.append(module)
        return real(module, *args, **kwargs)

    def _booked(self, ledger):
        for event in ledger.events[self.seen_events:]:
            self.timeline.append((event.kind, event.block))
        self.seen_events = len(ledger.events)

    def forwards(self) -> list[list]:
        runs = []
        for entry in self.timeline:
            if entry == ("start", 0):
                runs.append([])
            if runs:
                runs[-1].append(entry)
        return runs


def check_schedule(run: list, swapped: list[int], prefetch: int, tensor_counts: list[int]) -> None:
    """In one forward: each swapped block copied once, issued at block max(0, j - prefetch), released after."""
    for j in swapped:
        copies = [n for n, entry in enumerate(run) if entry == ("copy", j)]
        assert len(copies) == tensor_counts[j], f"block {j} copied {len(copies)} tensors"
        issued_at = max(entry[1] for entry in run[: copies[0]] if entry[0] == "start")
        assert issued_at == max(0, j - prefetch)
        computing = [n for n, entry in enumerate(run) if entry == ("compute", j)]
        release = run.index(("release", j))
        assert copies[-1] < computing[0] and computing[-1] < release
        assert ("start", j + 1) not in run[:release]
    assert not [entry for entry in run if entry[0] == "copy" and entry[1] not in swapped]


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_schedule_moves_and_ledger_in_a_sampling_run(model, monkeypatch, prefetch):
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap=3, prefetch_blocks=prefetch))
    blocks = offloaded.model.diffusion_model.blocks
    ledger = offloaded.get_attachment(KEY).ledger
    recorder = Recorder(monkeypatch, blocks, ledger)
    with MemoryMonitor(devices=[]) as monitor:
        ledger.listeners.append(monitor.record_resident)
        sample(offloaded)
    comfy.model_management.unload_all_models()  # ComfyUI's own unloading: must not move swapped blocks either

    swapped_modules = {id(m) for block in blocks[1:] for m in block.modules()}
    assert recorder.moved_modules, "ComfyUI's loading was not observed"
    assert not [m for m in recorder.moved_modules if id(m) in swapped_modules]
    runs = recorder.forwards()
    assert len(runs) == 3  # 3 steps, cond and uncond batched into one forward
    for run in runs:
        check_schedule(run, [1, 2, 3], prefetch, recorder.tensor_counts)
    sizes, other = block_sizes(offloaded.model)
    assert ledger.peak_bytes == monitor.peak_resident == planned_peak(sizes, 3, prefetch, base_bytes=other)
    assert offloaded.model_size() == ledger.peak_bytes


def test_lora_patches_are_what_gets_swapped(model):
    key = "diffusion_model.blocks.3.ffn.0.weight"
    weight = model.model.diffusion_model.blocks[3].ffn[0].weight
    diff = torch.full_like(weight, 0.01)
    patched = model.clone()
    patched.add_patches({key: (diff,)}, 1.0)
    expected = sample(patched)
    lora_then_offload = apply_offload(patched, OffloadSettings(blocks_to_swap=2))
    assert torch.equal(sample(lora_then_offload), expected)
    offload_then_lora = apply_offload(model, OffloadSettings(blocks_to_swap=2)).clone()
    offload_then_lora.add_patches({key: (diff,)}, 1.0)
    assert torch.equal(sample(offload_then_lora), expected)
    assert not torch.equal(sample(model), expected)


def test_plain_clone_after_offloaded_one_runs_untouched(model):
    expected = sample(model)
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap=NUM_BLOCKS, prefetch_blocks=1))
    assert torch.equal(sample(offloaded), expected)
    ledger = offloaded.get_attachment(KEY).ledger
    events = len(ledger.events)
    assert torch.equal(sample(model), expected)
    assert len(ledger.events) == events


def test_comfy_lowvram_load_leaves_swapped_blocks_alone(model):
    offloaded = apply_offload(model, OffloadSettings(blocks_to_swap=2))
    blocks = offloaded.model.diffusion_model.blocks
    budget = comfy.model_management.module_size(blocks[0]) // 2
    offloaded.load(torch.device("cpu"), lowvram_model_memory=budget)
    assert offloaded.model.model_lowvram  # ComfyUI cast some resident modules on demand
    for block in blocks[2:]:
        for module in block.modules():
            assert not getattr(module, "weight_function", []) and not hasattr(module, "prev_comfy_cast_weights")
    assert any(hasattr(m, "prev_comfy_cast_weights") for m in blocks[0].modules())
    offloaded.unpatch_model(torch.device("cpu"))


def test_pin_memory_and_checkpointing_options_keep_the_latent(model):
    expected = sample(model)
    settings = OffloadSettings(blocks_to_swap=2, prefetch_blocks=2, pin_memory=True, gradient_checkpointing=True)
    offloaded = apply_offload(model, settings)
    assert torch.equal(sample(offloaded), expected)
    assert all("forward" not in block.__dict__ for block in offloaded.model.diffusion_model.blocks)
