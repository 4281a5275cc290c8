"""Step pipeline engine: step splits, the schedule, the stage loop over 2 and 3 gloo workers."""
import pytest
import torch

from comfyui_parallel.parallel.pipeline import (PipelineReport, StageStats, ideal_speedup, schedule, split_steps)
from comfyui_parallel.utils.errors import Cancelled, InputError
from worker_groups import running_group

FN = "tests.unit.parallel.pipeline_fns:toy_stage"


@pytest.mark.parametrize("steps,stages,expected", [
    (10, 1, [(0, 10)]), (10, 2, [(0, 5), (5, 10)]), (10, 3, [(0, 4), (4, 7), (7, 10)]), (3, 3, [(0, 1), (1, 2), (2, 3)]),
])
def test_even_split(steps, stages, expected):
    assert split_steps(steps, stages) == expected


def test_balanced_split_follows_costs():
    # heun-like: every step costs two model calls except the last one
    costs = [2.0] * 9 + [1.0]
    ranges = split_steps(10, 2, costs)
    loads = [sum(costs[a:b]) for a, b in ranges]
    assert ranges == [(0, 5), (5, 10)] and loads == [10.0, 9.0]
    # one expensive early step pulls the first boundary forward
    costs = [5.0, 1, 1, 1, 1, 1, 1, 1]
    assert split_steps(8, 2, costs) == [(0, 2), (2, 8)]
    assert split_steps(6, 3, [1.0] * 6) == split_steps(6, 3)


def test_balanced_split_is_optimal_by_brute_force():
    import itertools

    costs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    best = min(max(sum(costs[a:b]) for a, b in zip((0, *cuts), (*cuts, 8)))
               for cuts in itertools.combinations(range(1, 8), 2))
    ranges = split_steps(8, 3, costs)
    assert max(sum(costs[a:b]) for a, b in ranges) == best
    assert ranges[0][0] == 0 and ranges[-1][1] == 8 and all(b > a for a, b in ranges)


def test_too_many_stages_is_an_input_error():
    with pytest.raises(InputError, match="gpu_ids.*3 stages.*only 2 steps"):
        split_steps(2, 3)


def test_schedule_stage_k_runs_sample_n_at_tick_n_plus_k():
    ticks = schedule(num_samples=3, num_stages=2)
    assert ticks == [[(0, 0)], [(0, 1), (1, 0)], [(0, 2), (1, 1)], [(1, 2)]]
    assert ideal_speedup(2, 8) == pytest.approx(16 / 9)
    assert ideal_speedup(1, 5) == 1.0


def test_report_accounting():
    stages = [StageStats(0, (0, 5), busy_s=3.0, span_s=4.0), StageStats(1, (5, 10), busy_s=3.0, span_s=4.0)]
    report = PipelineReport(stages, num_samples=3, wall_s=6.0)
    assert report.bubble_fraction == pytest.approx(0.25)
    assert report.samples_per_minute == pytest.approx(30.0)
    text = report.text()
    assert "stage 0: steps [0, 5)" in text and "stage 1: steps [5, 10)" in text and "bubble fraction 0.250" in text


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("num_samples", [1, 4])
def test_stage_loop_passes_state_through_every_stage_in_order(size, num_samples):
    group = running_group(size)
    ranges = split_steps(7, size)
    results = group.call(FN, num_samples, ranges)
    outputs = results[-1]["outputs"]
    assert [r["outputs"] for r in results[:-1]] == [[]] * (size - 1)
    assert len(outputs) == num_samples
    for n, state in enumerate(outputs):
        assert torch.equal(state["x"], torch.full((2, 3), float(n + 7)))
        assert state["trace"].tolist() == list(range(size))
        assert torch.equal(state["rng"], torch.arange(7, dtype=torch.uint8) + n)
    expected = schedule(num_samples, size)
    for rank, result in enumerate(results):
        ran = [tuple(pair) for pair in result["stats"]["ticks"]]
        assert ran == [(t, n) for t, pairs in enumerate(expected) for k, n in pairs if k == rank]
        assert result["stats"]["steps"] == list(ranges[rank])


def test_cancel_stops_every_stage_and_the_group_stays_usable():
    group = running_group(3)
    seen = []
    with pytest.raises(Cancelled):
        group.call(FN, 50, split_steps(6, 3), 0.01, on_progress=lambda rank, done, total: seen.append(done),
                   should_cancel=lambda: len(seen) >= 3)
    assert len(seen) < 3 * 50
    results = group.call(FN, 2, split_steps(6, 3))  # no stale message left between the stages
    assert [s["x"][0, 0].item() for s in results[-1]["outputs"]] == [6.0, 7.0]
