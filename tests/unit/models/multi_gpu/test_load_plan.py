"""When a block placement is planned again: it no longer fits, or capacities moved by more than a block
and the plan differs; the estimate before ComfyUI made room asks for the whole model when nothing fits."""
from comfyui_parallel.models.multi_gpu import load_plan

BLOCKS = [10] * 6


def test_estimate_before_room_is_made():
    assert load_plan.estimate_main_blocks(BLOCKS, [40, 40], rest=5) == {0, 1, 2}
    assert load_plan.estimate_main_blocks(BLOCKS, [20, 1000], rest=5) == set()
    assert load_plan.estimate_main_blocks(BLOCKS, [1, 1], rest=5) == set(range(6))


def test_held_bytes_count_placed_blocks_where_they_are():
    placement = load_plan.plan(BLOCKS, [40, 40], rest=5)
    assert load_plan.held_bytes(placement, BLOCKS, 7, 2) == [7, 0]  # not placed yet
    placement.distribution = object()
    assert load_plan.held_bytes(placement, BLOCKS, 7, 2) == [7, 30]


def test_needs_new_plan():
    current = load_plan.plan(BLOCKS, [40, 40], rest=5)  # blocks 0-2 on the main device, 3-5 on the other
    assert not load_plan.needs_new_plan(current, BLOCKS, [40, 40], rest=5)
    assert not load_plan.needs_new_plan(current, BLOCKS, [48, 40], rest=5)  # moved less than a block
    assert not load_plan.needs_new_plan(current, BLOCKS, [100, 100], rest=5)  # moved, but the same plan
    assert load_plan.needs_new_plan(current, BLOCKS, [200, 40], rest=5)  # room for more on the main device
    assert load_plan.needs_new_plan(current, BLOCKS, [60, 25], rest=5)  # no longer fits the other device
    assert not load_plan.needs_new_plan(current, BLOCKS, [1, 1], rest=5)  # nothing fits: keep what there is
