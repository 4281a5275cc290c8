"""weight_sharding plans for the real-size Wan 2.1 14B, built on the meta device from ComfyUI's own WanModel
(no memory allocated): 2 x 24 GB and 4 x 16 GB cannot hold a replica, fsdp fits, and auto picks fsdp.
The per-GPU weight peaks are printed in the test log (pytest -s)."""
import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy
from comfyui_parallel.models.multi_gpu.sharding import wan_sharding_plan
from comfyui_parallel.parallel.plan import GIB, block_bytes, gib, module_bytes

ensure_comfy()
import comfy.ops  # noqa: E402  (after ensure_comfy: ComfyUI must be configured for the CPU first)
from comfy.ldm.wan.model import WanModel  # noqa: E402

RESERVE = 2 * GIB  # memory_reserve_gb's default
SETUPS = {"2x24GB": (2, 24 * GIB), "4x16GB": (4, 16 * GIB)}


@pytest.fixture(scope="module")
def wan14b():
    return WanModel(model_type="t2v", in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, device="meta",
                    dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init,
                    dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_14b_fits_with_fsdp_where_a_replica_does_not(wan14b, setup, capsys):
    world, free = SETUPS[setup]
    sizes = block_bytes(wan14b.blocks)
    rest = module_bytes(wan14b) - sum(sizes)
    replica = wan_sharding_plan(wan14b, world, free, RESERVE, "replicate")
    fsdp = wan_sharding_plan(wan14b, world, free, RESERVE, "fsdp")
    assert replica.device_bytes == module_bytes(wan14b) > 26 * GIB and not replica.fits
    assert fsdp.device_bytes == rest + sum(-(-s // world) for s in sizes) + 2 * max(sizes)
    assert fsdp.fits
    assert wan_sharding_plan(wan14b, world, free, RESERVE, "auto").sharding == "fsdp"
    with capsys.disabled():
        print(f"\nWan 2.1 14B bf16 on {setup}: replica {gib(replica.device_bytes)}, fsdp peak per GPU "
              f"{gib(fsdp.device_bytes)} of {gib(fsdp.capacity)} after the reserve "
              f"(shards {gib(sum(sizes) / world)}, two gathered blocks {gib(2 * max(sizes))}, rest {gib(rest)})")


def test_a_replica_that_fits_is_kept(wan14b):
    assert wan_sharding_plan(wan14b, 2, 80 * GIB, RESERVE, "auto").sharding == "replicate"
