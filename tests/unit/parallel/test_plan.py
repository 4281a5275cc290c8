"""Block planning: sizes from (meta) modules, contiguous balanced runs, errors, recommendation,
and the comparison with accelerate's infer_auto_device_map on the same inputs."""
import itertools
import random
import warnings

import pytest
import torch
from accelerate import infer_auto_device_map
from torch import nn

from comfyui_parallel.parallel.plan import (GIB, PlanError, block_bytes, module_bytes, plan_blocks,
                                            recommend)
from comfyui_parallel.utils.errors import InputError


class SizedBlock(nn.Module):
    """A block holding exactly `n` float32 values on the meta device."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, device="meta"))


class SizedModel(nn.Module):
    """Main-device parts first (as accelerate visits modules in order), then the blocks."""

    def __init__(self, extra: int, sizes: list[int]):
        super().__init__()
        self.embed = SizedBlock(extra)
        self.blocks = nn.ModuleList(SizedBlock(n) for n in sizes)


def test_block_bytes_on_meta_and_shared_tensors_counted_once():
    blocks = [nn.Linear(10, 20, device="meta"), nn.Linear(4, 4, bias=False).to(torch.float16)]
    assert block_bytes(blocks) == [(200 + 20) * 4, 16 * 2]
    tied = nn.Module()
    tied.a = nn.Linear(3, 3, bias=False)
    tied.b = tied.a
    assert module_bytes(tied) == 9 * 4


def test_contiguous_runs_balanced_in_proportion_to_capacity():
    plan = plan_blocks([10] * 12, [200, 100])
    assert plan.assignment == [0] * 8 + [1] * 4
    assert plan.device_bytes == [80, 40]
    assert plan.runs() == [(0, 0, 8), (1, 8, 12)]


def test_first_device_extra_takes_room_on_device_zero():
    plan = plan_blocks([10] * 10, [100, 100], first_device_extra=20)
    assert plan.device_bytes == [20 + 40, 60]
    assert plan.peak_fraction == pytest.approx(0.6)
    assert "device 0: blocks 0-3" in plan.describe()


def test_device_with_no_room_gets_nothing():
    plan = plan_blocks([5, 5, 5], [0, 100, 0])
    assert plan.assignment == [1, 1, 1]
    assert "device 0: no blocks" in plan.describe()


def test_cannot_fit_says_missing_bytes_and_suggests_offloading():
    with pytest.raises(PlanError) as err:
        plan_blocks([GIB] * 10, [4 * GIB, 4 * GIB], first_device_extra=GIB)
    assert isinstance(err.value, InputError)
    assert err.value.missing_bytes == 3 * GIB
    text = str(err.value)
    assert text.startswith("gpu_ids: ") and "3.00 GiB missing" in text and "offloading" in text


def test_a_block_larger_than_every_device():
    with pytest.raises(PlanError, match="contiguous runs") as err:
        plan_blocks([1, 50, 1], [40, 40])
    assert err.value.missing_bytes == 10


def test_plan_is_optimal_against_brute_force():
    rng = random.Random(1)
    for _ in range(60):
        sizes = [rng.randint(1, 9) for _ in range(rng.randint(1, 7))]
        caps = [rng.randint(5, 30) for _ in range(rng.randint(1, 3))]
        best = None
        for assign in itertools.product(range(len(caps)), repeat=len(sizes)):
            if list(assign) != sorted(assign):
                continue
            held = [sum(s for s, d in zip(sizes, assign) if d == i) for i in range(len(caps))]
            if all(h <= c for h, c in zip(held, caps)):
                peak = max(h / c for h, c in zip(held, caps))
                best = peak if best is None else min(best, peak)
        if best is None:
            with pytest.raises(PlanError):
                plan_blocks(sizes, caps)
        else:
            assert plan_blocks(sizes, caps).peak_fraction == pytest.approx(best)


def accelerate_plan(sizes: list[int], caps: list[int], extra: int) -> tuple[bool, float]:
    """(all on the GPUs?, fullest device's fill) of infer_auto_device_map for the same inputs."""
    model = SizedModel(extra // 4, [s // 4 for s in sizes])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device_map = infer_auto_device_map(model, max_memory=dict(enumerate(caps)),
                                           no_split_module_classes=["SizedBlock"])
    if any(not isinstance(d, int) for d in device_map.values()):
        return False, float("inf")
    held = [0] * len(caps)
    for name, dev in device_map.items():
        held[dev] += module_bytes(model.get_submodule(name))
    return True, max(h / c for h, c in zip(held, caps))


@pytest.mark.parametrize("sizes, caps, extra", [
    ([1000] * 8, [4800, 4800], 400),
    ([1000] * 8, [4800, 4800, 4800], 400),
    ([1000] * 40, [24000, 24000], 2000),
    ([1000] * 40, [12000] * 4, 2000),
    ([1000] * 40, [80000], 2000),
    ([700, 1300, 900, 1100] * 6, [9000, 12000, 8000], 1200),
])
def test_never_worse_than_accelerate(sizes, caps, extra, capsys):
    ours = plan_blocks(sizes, caps, extra)
    fits, their_peak = accelerate_plan(sizes, caps, extra)
    with capsys.disabled():
        print(f"\n{len(sizes)} blocks on {caps}: ours peak {ours.peak_fraction:.3f}, "
              f"accelerate {'peak %.3f' % their_peak if fits else 'spills to cpu/disk'}")
    assert ours.peak_fraction <= their_peak + 1e-9


def test_ours_fits_where_accelerate_spills():
    fits, _ = accelerate_plan([1000] * 8, [4800, 4800], 400)
    assert not fits
    assert plan_blocks([1000] * 8, [4800, 4800], 400).device_bytes == [4400, 4000]


@pytest.mark.parametrize("model, free, kind, count, swap", [
    (10, [100], "none", 1, 0.0),
    (10, [100, 100], "data_parallel", 2, 0.0),
    (60, [100, 40], "none", 1, 0.0),
    (150, [100, 100], "block_distribution", 2, 0.0),
    (300, [100, 100], "block_distribution", 2, 0.4),
    (200, [100], "none", 1, 0.55),
    (50, [5], "none", 1, 1.0),
])
def test_recommend(model, free, kind, count, swap):
    rec = recommend(model, free, reserve=10)
    assert (rec.parallelism_type, rec.device_count) == (kind, count)
    assert rec.blocks_to_swap_fraction == pytest.approx(swap)
    assert rec.reason


def test_blocks_to_swap_rounds_up():
    rec = recommend(300, [100, 100], reserve=10)
    assert rec.blocks_to_swap(40) == 16
    assert recommend(10, [100], 0).blocks_to_swap(40) == 0
