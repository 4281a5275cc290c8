"""Hook cost per block of block_distribution, against accelerate's dispatch_model on the same split.

A tiny Wan (ComfyUI's own WanModel, dim 128, 8 blocks, text_dim 4096) at 1 thread has a
forward of a few milliseconds, so the per-block bookkeeping is visible; on a big model it
vanishes in noise. Blocks 0-3 go to the first device and 4-7 to the second. On the CPU
every copy is a no-op, so what is measured is the pure hook cost: this pack's
`distribute_blocks` over "cpu,cpu", and accelerate's `dispatch_model` (forced hooks,
AlignDevicesHook per block, no offload). Each round runs the plain model and both
variants in a shuffled order (paired, interleaved); the figures are the medians of
(variant - plain) per forward, divided by the 8 hooked blocks. Outputs are checked equal
to the plain forward first. accelerate attaches its AlignDevicesHook to every submodule of a
block as well (about 19 per Wan block), which is where most of its per-block cost goes; this
pack hooks each block once and moves a shared input once per device per forward.
"""
import copy
import random
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 300
BLOCKS = 8


def tiny_wan():
    """ComfyUI's WanModel at dim 128 with 8 blocks, deterministic random weights."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from devtools.demo_models import random_init_

    model = WanModel(model_type="t2v", dim=128, ffn_dim=256, num_heads=1, num_layers=BLOCKS, text_dim=4096,
                     in_dim=16, out_dim=16, freq_dim=256, operations=comfy.ops.disable_weight_init)
    return random_init_(model, seed=0).eval()


def variants(model) -> dict:
    """The plain model, block_distribution over cpu,cpu, and accelerate's dispatch on the same split."""
    from accelerate import dispatch_model
    from comfyui_parallel.parallel.devices import parse_gpu_ids
    from comfyui_parallel.parallel.placement import distribute_blocks

    ours = copy.deepcopy(model)
    devices = parse_gpu_ids("cpu,cpu")
    split = [0] * (BLOCKS // 2) + [1] * (BLOCKS - BLOCKS // 2)
    distribute_blocks(ours.blocks, devices, split, devices[0])
    theirs = copy.deepcopy(model)
    device_map = {str(i): "cpu" for i in range(BLOCKS)}  # "cpu" on both halves: same hooks, no offload
    dispatch_model(theirs.blocks, device_map, main_device="cpu", force_hooks=True)
    assert all(hasattr(block, "_hf_hook") for block in theirs.blocks)
    return {"plain": model, "distribution": ours, "accelerate": theirs}


def timed(model, inputs) -> float:
    start = time.perf_counter()
    model(*inputs)
    return time.perf_counter() - start


def measure(models: dict, inputs, rounds: int) -> dict:
    """Per-round seconds of each variant, in a shuffled order every round."""
    times = {name: [] for name in models}
    order = list(models)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(models[name], inputs))
    return times


def run() -> dict:
    torch.set_num_threads(1)
    model = tiny_wan()
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 16, 2, 8, 8, generator=generator), torch.tensor([500.0]),
              torch.randn(1, 16, 4096, generator=generator))
    with torch.no_grad():
        models = variants(model)
        reference = model(*inputs)
        for name, variant in models.items():
            assert torch.equal(variant(*inputs), reference), f"{name} output differs from the plain forward"
        measure(models, inputs, 20)  # warm-up
        times = measure(models, inputs, ROUNDS)
    plain_ms = statistics.median(times["plain"]) * 1000
    per_block = {name: statistics.median(t - p for t, p in zip(times[name], times["plain"])) / BLOCKS * 1e6
                 for name in ("distribution", "accelerate")}
    print(f"  plain forward {plain_ms:.2f} ms (tiny Wan, {BLOCKS} blocks, 1 thread, {ROUNDS} paired rounds)")
    print(f"  hook cost per block: block_distribution {per_block['distribution']:.1f} us, "
          f"accelerate dispatch_model {per_block['accelerate']:.1f} us")
    what = ("extra time per forward over the plain model, divided by the {} hooked blocks; tiny Wan dim 128, "
            "1 thread, blocks split 4+4, median of {} paired interleaved rounds").format(BLOCKS, ROUNDS)
    return {
        "hook_us_per_block_distribution": {"value": round(per_block["distribution"], 2), "unit": "us",
                                           "better": "lower", "what": "block_distribution over cpu,cpu: " + what},
        "hook_us_per_block_accelerate": {"value": round(per_block["accelerate"], 2), "unit": "us",
                                         "better": "lower", "what": "accelerate dispatch_model, same split: " + what},
        "hook_bench_plain_forward_ms": {"value": round(plain_ms, 3), "unit": "ms", "better": "lower",
                                        "what": "the plain tiny-Wan forward the hook costs are measured against"},
    }


if __name__ == "__main__":
    run()
