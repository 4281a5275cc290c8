"""Ulysses sequence parallelism equals single-process attention on 2 and 3 gloo ranks.

Token and head counts that do and do not divide the rank count; rotary positions global.
"""
import pytest
import torch

from comfyui_parallel.parallel import sequence
from sequence_fns import reference
from worker_groups import running_group

FNS = "tests.unit.parallel.sequence_fns"


@pytest.fixture(params=[2, 3], ids=["2ranks", "3ranks"])
def group(request):
    return running_group(request.param)


@pytest.mark.parametrize("length, heads", [(12, 6), (13, 6), (12, 5), (7, 4), (2, 3)],
                         ids=["even", "odd-tokens", "odd-heads", "odd-both", "fewer-tokens-than-ranks"])
def test_ulysses_equals_single_process_attention(group, length, heads):
    batch, dim, seed = 2, 8, length * 100 + heads
    expected = reference(seed, batch, length, heads, dim)
    results = group.call(f"{FNS}:ulysses", seed, batch, length, heads, dim)
    size = sequence.shard_length(length, group.world_size)
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["gathered"], expected, rtol=1e-5, atol=1e-6)
        start, stop = sequence.shard_range(length, rank, group.world_size)
        assert result["local"].shape == (batch, size, heads, dim)
        torch.testing.assert_close(result["local"][:, :stop - start], expected[:, start:stop], rtol=1e-5, atol=1e-6)
        assert not result["local"][:, stop - start:].any()  # padding rows stay zero


def test_split_pads_at_the_end_of_the_global_sequence():
    x = torch.arange(7.0).view(1, 7, 1)
    shards = [sequence.split_sequence(x, 1, rank, 3) for rank in range(3)]
    assert [s.flatten().tolist() for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 0, 0]]
    assert [sequence.shard_range(7, rank, 3) for rank in range(3)] == [(0, 3), (3, 6), (6, 7)]
    assert [sequence.shard_range(2, rank, 3) for rank in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_rotary_slice_keeps_global_positions():
    positions = torch.arange(10.0).view(1, 10, 1, 1)
    assert sequence.slice_rotary(positions, 1, 2, 3).flatten().tolist() == [8, 9, 0, 0]


def test_single_process_path_trims_padding():
    q, k, v = (torch.randn(1, 6, 2, 4) for _ in range(3))
    out = sequence.ulysses_attention(q, k, v, length=4)
    torch.testing.assert_close(out[:, :4], sequence.sdpa_attention(q[:, :4], k[:, :4], v[:, :4]))
    assert not out[:, 4:].any()
