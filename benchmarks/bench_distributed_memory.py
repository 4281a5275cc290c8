"""Host RAM the distributed mode holds for the weights, read from the processes' real memory.

A ComfyUI Wan of 560 MiB (dim 1024, 10 blocks, fp32) over 2 CPU workers, for weight_sharding
replicate and fsdp:

- `distributed_host_weight_copies_{replicate,fsdp}`: the growth of the proportional set size
  (PSS, from /proc/<pid>/smaps via psutil) of this process (ComfyUI's server side, from before
  the model is loaded to after it is gone) plus every worker (from when it started, before it got
  the model), after one model call, over the model's weight bytes. PSS splits a shared page among the processes
  mapping it, so the sum counts each page once: 1.0 = one copy of the weights on the machine.
  Each variant runs in a fresh process (memory an earlier run freed would otherwise be reused
  unseen), and the workers' baseline is taken after they imported ComfyUI.
  Before issue 13 the server kept ComfyUI's copy and the workers a second one in shared memory (2.0).
- `fsdp_weight_fraction_per_rank_2ranks`: the largest block-weight bytes one rank holds after the
  call (measured from its tensors in the worker) over all block-weight bytes.
"""
import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
DIM, BLOCKS = 1024, 10
HELD = "models.multi_gpu.sharding:held_bytes"


def load_model():
    import comfy.sd
    from devtools.demo_models import tiny_wan_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(dim=DIM, num_layers=BLOCKS, seed=1))


def pss(pid: int) -> int:
    return psutil.Process(pid).memory_full_info().pss


def call(model) -> None:
    """One diffusion-model call (a small CFG pair) through the MODEL's wrappers, as ComfyUI's sampler makes it."""
    import comfy.patcher_extension
    from comfyui_parallel.models.multi_gpu.wrappers import runner_of

    diffusion = model.model.diffusion_model
    executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(diffusion._forward, diffusion,
                                                                          [runner_of(model)])
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        executor.execute(torch.randn(2, 16, 1, 8, 8, generator=generator), torch.tensor([500.0, 500.0]),
                         torch.randn(2, 4, 4096, generator=generator), None, None, {})


def import_comfy(ctx) -> int:
    """Worker function: import ComfyUI's Wan as load_model will, so the baseline includes it."""
    from comfyui_parallel.models.comfy import wan  # noqa: F401
    from comfyui_parallel.parallel.shared_weights import return_freed_memory

    return_freed_memory()
    return ctx.rank


def settled_pss() -> int:
    """This process's PSS after garbage collection, with freed pages given back to the system."""
    from comfyui_parallel.parallel.shared_weights import return_freed_memory

    gc.collect()
    return_freed_memory()
    return pss(psutil.Process().pid)


def measure(sharding: str) -> tuple[float, float, str]:
    """(host bytes held / weight bytes, largest rank's block fraction, description) for one sharding.

    The server's share is its PSS with the model loaded and called minus its PSS once the model and
    workers are gone again (the model freed: checked); each worker's from its start to after the call.
    """
    from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve
    from comfyui_parallel.models.multi_gpu.wrappers import runner_of
    from comfyui_parallel.parallel.plan import module_bytes

    model = load_model()
    weights = module_bytes(model.model.diffusion_model)
    block_total = sum(module_bytes(b) for b in model.model.diffusion_model.blocks)
    model = apply_multi_gpu(model, resolve(model, MultiGPURequest("distributed", "cpu,cpu", weight_sharding=sharding)))
    runner = runner_of(model)
    group = runner.lease.get().start()
    group.call("benchmarks.bench_distributed_memory:import_comfy")
    workers_before = {pid: pss(pid) for pid in group.pids}
    try:
        call(model)
        server_loaded = settled_pss()
        workers = sum(pss(pid) - before for pid, before in workers_before.items())
        held = group.call(HELD)
    finally:
        runner.close()
    freed = weakref.ref(model.model.diffusion_model)
    del model, runner, group
    server = server_loaded - settled_pss()
    if freed() is not None:
        raise RuntimeError("the model outlived its last reference: the server's baseline would include it")
    fraction = max(h["blocks"] for h in held) / block_total
    what = (f"{sharding}: server +{server / 2**20:.0f} MiB, 2 workers +{workers / 2**20:.0f} MiB (PSS) "
            f"for {weights / 2**20:.0f} MiB of weights")
    return (server + workers) / weights, fraction, what


def measure_apart(sharding: str) -> tuple[float, float, str]:
    """`measure` in a fresh Python process (this file run with the sharding as its argument)."""
    done = subprocess.run([sys.executable, __file__, sharding], capture_output=True, text=True, check=True, cwd=REPO)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def run() -> dict:
    results = {}
    for sharding in ("replicate", "fsdp"):
        copies, fraction, what = measure_apart(sharding)
        results[f"distributed_host_weight_copies_{sharding}"] = {
            "value": copies, "unit": "copies", "better": "lower", "what": what + " (goal <= 1.2)"}
        if sharding == "fsdp":
            results["fsdp_weight_fraction_per_rank_2ranks"] = {
                "value": fraction, "unit": "fraction", "better": "lower",
                "what": "largest block-weight bytes one of 2 fsdp ranks holds after a call (its tensors) / all "
                        "block-weight bytes (goal <= 0.55)"}
    for name, result in results.items():
        print(f"{name}: {result['value']:.3f} {result['unit']}  ({result['what']})")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from devtools.pack import comfy_on_path

    comfy_on_path()
    print(json.dumps(measure(sys.argv[1])))
