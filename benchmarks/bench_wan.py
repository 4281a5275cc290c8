"""Wan over several CPU "devices": one sampling step's time, side by side in one run.

A small ComfyUI Wan whose attention dominates (dim 512, 4 heads, 4 blocks, text_dim 4096)
on a 4 x 64 x 64 latent (4096 video tokens), one step = one diffusion-model call with the
CFG pair (batch 2), through the same wrappers ComfyUI's sampler calls:

- `ulysses_speedup_2ranks`: plain, this process at 1 thread / distributed, 2 gloo worker
  processes at 1 thread each (Ulysses: every block's attention split by heads over the ranks).
- `ulysses_fsdp_speedup_2ranks`: the same, with weight_sharding fsdp (each block's weights split
  over the 2 workers by FSDP2, gathered just before it runs).
- `ulysses_speedup_vs_2threads`: plain at 2 threads / distributed with 2 ranks (same cores).
- `data_parallel_cfg_speedup`: plain at 1 thread / data_parallel over "cpu,cpu" (cond and
  uncond on two threads of this process, 1 intra-op thread each).

Each variant is warmed up once (worker start, weight hand-out; its output is checked against
plain), then timed over ROUNDS calls in interleaved order (one round by default: a step takes
seconds at 1 thread); the figure is the ratio of medians. On a shared 2-core machine the
ratios depend on what else runs.
"""
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 1
LATENT = (2, 16, 4, 64, 64)  # CFG pair, 4 latent frames of 64 x 64 -> 4 x 32 x 32 = 4096 tokens


def load_model():
    import comfy.sd
    from devtools.demo_models import tiny_wan_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(dim=512, num_layers=4, seed=1))


def inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(LATENT, generator=generator), torch.tensor([700.0, 700.0]),
            torch.randn(2, 16, 4096, generator=generator))


def step_function(patcher, mode: str, sharding: str = "replicate"):
    """One diffusion-model call through the patcher's wrappers, as ComfyUI's sampler makes it."""
    import comfy.patcher_extension
    from comfyui_parallel.models.multi_gpu.wrappers import runner_of
    from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve

    model = patcher
    if mode != "none":
        model = apply_multi_gpu(patcher, resolve(patcher, MultiGPURequest(mode, "cpu,cpu", weight_sharding=sharding)))
    diffusion = model.model.diffusion_model
    wrappers = [runner_of(model)] if mode != "none" else []

    def step():
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(diffusion._forward, diffusion, wrappers)
        with torch.inference_mode():
            return executor.execute(*inputs(), None, None, {})

    return step, model


def timed(step, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run() -> dict:
    patcher = load_model()
    plain, _ = step_function(patcher, "none")
    ulysses, keep_distributed = step_function(load_model(), "distributed")
    fsdp, keep_fsdp = step_function(load_model(), "distributed", "fsdp")
    data_parallel, keep_dp = step_function(load_model(), "data_parallel")
    torch.set_num_threads(1)
    expected = plain()
    for name, variant in (("distributed", ulysses), ("fsdp", fsdp), ("data_parallel", data_parallel)):
        torch.testing.assert_close(variant(), expected, rtol=1e-3, atol=1e-3, msg=f"{name} differs from plain")
    times = {"plain_1t": [], "plain_2t": [], "ulysses": [], "fsdp": [], "dp": []}
    for _ in range(ROUNDS):
        times["plain_1t"].append(timed(plain, 1))
        times["ulysses"].append(timed(ulysses, 1))
        times["fsdp"].append(timed(fsdp, 1))
        times["dp"].append(timed(data_parallel, 1))
        times["plain_2t"].append(timed(plain, 2))
    median = {k: statistics.median(v) for k, v in times.items()}
    from comfyui_parallel.models.multi_gpu.wrappers import runner_of

    runner_of(keep_distributed).close()
    runner_of(keep_fsdp).close()
    runner_of(keep_dp).close()
    results = {
        "ulysses_speedup_2ranks": {
            "value": median["plain_1t"] / median["ulysses"], "unit": "x", "better": "higher",
            "what": f"one Wan step (4096 tokens, CFG pair): 1 process x 1 thread {median['plain_1t']:.2f}s / "
                    f"distributed 2 workers x 1 thread {median['ulysses']:.2f}s"},
        "ulysses_fsdp_speedup_2ranks": {
            "value": median["plain_1t"] / median["fsdp"], "unit": "x", "better": "higher",
            "what": f"the same step: 1 process x 1 thread {median['plain_1t']:.2f}s / distributed 2 workers x "
                    f"1 thread with weight_sharding fsdp {median['fsdp']:.2f}s (goal >= 1.6)"},
        "ulysses_speedup_vs_2threads": {
            "value": median["plain_2t"] / median["ulysses"], "unit": "x", "better": "higher",
            "what": f"the same step: 1 process x 2 threads {median['plain_2t']:.2f}s / "
                    f"distributed 2 workers x 1 thread {median['ulysses']:.2f}s"},
        "data_parallel_cfg_speedup": {
            "value": median["plain_1t"] / median["dp"], "unit": "x", "better": "higher",
            "what": f"the same step: none at 1 thread {median['plain_1t']:.2f}s / data_parallel cpu,cpu "
                    f"(cond and uncond on 2 threads) {median['dp']:.2f}s"},
    }
    for name, result in results.items():
        print(f"{name}: {result['value']:.2f}{result['unit']}  ({result['what']})")
    return results


if __name__ == "__main__":
    run()
