"""parallel/sharding.py: FSDP2 block sharding in real gloo worker groups, and the sharding plan."""
import sys

import pytest
import torch

from comfyui_parallel.parallel.sharding import fsdp_device_bytes, fsdp_missing, placement_for, plan_sharding
from comfyui_parallel.parallel.shared_weights import share_state_dict
from comfyui_parallel.utils.errors import InputError
from sharding_fns import build
from worker_groups import running_group

FN = "tests.unit.parallel.sharding_fns:sharded_forward"


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_blocks_equal_the_plain_model_and_hold_one_nth(size):
    results = running_group(size).call(FN, 0, 64, 4)
    for result in results:
        torch.testing.assert_close(result["sharded"], result["plain"], rtol=0, atol=0)
        torch.testing.assert_close(result["again"], result["plain"], rtol=0, atol=0)
    whole = results[0]["whole_block_bytes"]
    held = [r["resident_block_bytes"] for r in results]
    assert sum(held) == whole, "the shards add up to the blocks, and no gathered copy is left after the forward"
    assert max(held) <= whole / size * 1.05, f"one rank holds {max(held)} of {whole} block bytes"
    assert all(r["rest_bytes"] == results[0]["rest_bytes"] > 0 for r in results), "embed / head replicated"


def test_shards_can_be_views_of_one_shared_copy():
    model = build(0, 64, 4)
    shared = share_state_dict(model.state_dict())
    try:
        results = running_group(2).call(FN, 0, 64, 4, shared)
    finally:
        shared.release()
    linear = {f"blocks.{name}": p for name, p in model.blocks.named_parameters() if name.split(".")[-2] == "fc"}
    for result in results:
        torch.testing.assert_close(result["sharded"], result["plain"], rtol=0, atol=0)
        assert sorted(result["viewing"]) == sorted(linear), "each Linear shard lies in the shared block"
        assert result["adopted"] == sum(p.numel() * p.element_size() for p in linear.values()) // 2


def test_without_prefetch_the_result_is_the_same():
    for result in running_group(2).call(FN, 1, 32, 3, None, False):
        torch.testing.assert_close(result["sharded"], result["plain"], rtol=0, atol=0)


def test_short_first_dims_are_split_on_a_longer_one():
    placement = placement_for(2)
    assert placement(torch.nn.Parameter(torch.empty(1, 6, 64))).dim == 2
    assert placement(torch.nn.Parameter(torch.empty(64, 32))).dim == 0
    assert placement(torch.nn.Parameter(torch.empty(1, 3))).dim == 0  # nothing divides: FSDP pads dim 0


def test_fsdp_peak_is_the_shards_plus_two_gathered_blocks():
    assert fsdp_device_bytes([100] * 10, 50, 4) == 50 + 10 * 25 + 200
    assert fsdp_device_bytes([100] * 10, 50, 4, prefetch=False) == 50 + 10 * 25 + 100


def test_auto_replicates_when_a_replica_fits_else_shards():
    assert plan_sharding([100] * 10, 50, 2, free=2000, reserve=500).sharding == "replicate"
    plan = plan_sharding([100] * 10, 50, 2, free=1400, reserve=500)
    assert (plan.sharding, plan.fits) == ("fsdp", True)
    assert plan_sharding([100] * 10, 50, 2, free=100, reserve=0, sharding="replicate").fits is False
    with pytest.raises(InputError, match="weight_sharding"):
        plan_sharding([1], 0, 2, free=1, reserve=0, sharding="zero3")


def test_a_torch_without_fsdp2_is_named(monkeypatch):
    assert fsdp_missing() == ""
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", None)  # as on a torch before 2.6: import fails
    assert fsdp_missing().startswith(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard")
