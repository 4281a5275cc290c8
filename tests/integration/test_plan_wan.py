"""Planning the real-size Wan 2.1 14B and 1.3B, built on the meta device from ComfyUI's own
WanModel class (no memory allocated): bytes per block, and plans for 2x24 GB, 4x10 GB, 1x80 GB.
The figures are printed in the test log (pytest -s, or the captured output on failure)."""
import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy
from comfyui_parallel.parallel.plan import GIB, PlanError, block_bytes, gib, module_bytes, plan_blocks, recommend

ensure_comfy()
import comfy.ops  # noqa: E402  (after ensure_comfy: ComfyUI must be configured for the CPU first)
from comfy.ldm.wan.model import WanModel  # noqa: E402

WAN_CONFIGS = {  # Wan 2.1 T2V, as published
    "14B": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "1.3B": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
}
RESERVE = 2 * GIB  # left free on every GPU for activations
SETUPS = {"2x24GB": [24 * GIB] * 2, "4x10GB": [10 * GIB] * 4, "1x80GB": [80 * GIB]}


@pytest.fixture(scope="module", params=list(WAN_CONFIGS))
def wan(request):
    model = WanModel(model_type="t2v", in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, device="meta",
                     dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init, **WAN_CONFIGS[request.param])
    sizes = block_bytes(model.blocks)
    return request.param, sizes, module_bytes(model) - sum(sizes)


def test_meta_model_allocates_nothing(wan):
    name, sizes, other = wan
    assert len(set(sizes)) == 1  # Wan's blocks are identical
    params = sum(sizes + [other]) / 2
    assert (13e9 < params < 15e9) if name == "14B" else (1.2e9 < params < 1.5e9)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_plans(wan, setup, capsys):
    name, sizes, other = wan
    caps = [c - RESERVE for c in SETUPS[setup]]
    rec = recommend(sum(sizes) + other, SETUPS[setup], RESERVE)
    plan = plan_blocks(sizes, caps, first_device_extra=other)
    with capsys.disabled():
        print(f"\nWan 2.1 {name} (bf16): {len(sizes)} blocks of {gib(sizes[0])}, {gib(other)} outside the blocks;"
              f" on {setup} (reserve {gib(RESERVE)} each): recommended {rec.parallelism_type}"
              f" on {rec.device_count}; peak fill {plan.peak_fraction:.0%}\n{plan.describe()}")
    devices_in_order = [dev for dev, _, _ in plan.runs()]
    assert devices_in_order == sorted(set(devices_in_order))  # one contiguous run per device
    assert all(held <= cap for held, cap in zip(plan.device_bytes, caps))
    assert sum(plan.device_bytes) == sum(sizes) + other
    if name == "14B" and setup != "1x80GB":
        assert rec.parallelism_type == "block_distribution" and len(plan.runs()) == len(caps)
    if name == "1.3B":
        assert rec.parallelism_type in ("none", "data_parallel")


def test_14b_on_two_10gb_gpus_says_what_is_missing(capsys):
    model = WanModel(model_type="t2v", device="meta", dtype=torch.bfloat16,
                     operations=comfy.ops.disable_weight_init, **WAN_CONFIGS["14B"])
    sizes = block_bytes(model.blocks)
    other = module_bytes(model) - sum(sizes)
    with pytest.raises(PlanError) as err:
        plan_blocks(sizes, [8 * GIB, 8 * GIB], first_device_extra=other)
    rec = recommend(sum(sizes) + other, [10 * GIB, 10 * GIB], RESERVE)
    with capsys.disabled():
        print(f"\nWan 14B on 2x10GB: {err.value}\n  recommended {rec.parallelism_type}, swap "
              f"{rec.blocks_to_swap(len(sizes))} of {len(sizes)} blocks")
    assert err.value.missing_bytes > 10 * GIB and "offloading" in str(err.value)
    assert rec.parallelism_type == "block_distribution" and 0 < rec.blocks_to_swap(len(sizes)) < len(sizes)
