"""`make gpu-check`: the figures that need a GPU, measured in one short run on one CUDA device.

Real-size models with random weights are built on the device (nothing is downloaded):

1. Offload on Wan 2.1 14B-shaped blocks (ComfyUI's own WanModel: dim 5120, 40 heads, 40 blocks,
   bf16): the step time of one forward at a 480p token count, resident and with 10 / 20 / 40
   blocks swapped x prefetch 0 / 1 / 2 x pinned / pageable, timed with CUDA events; the ratio to
   resident (`offload_slowdown_half_swapped`: 20 swapped, prefetch 1, pinned; goal <= 1.05); the
   measured weight peak (`torch.cuda.max_memory_allocated` less the resident run's activations)
   against the ledger's plan (`offload_peak_vs_plan`, the largest of all runs).
2. Hook cost per block on the device (a tiny Wan, every block swapped, prefetch 1).
3. SeedVR 3B and 7B (gpu_check_models.py), and each parallel mode on one GPU equal to plain:
   data_parallel / block_distribution over cuda:0,cuda:0, distributed with one NCCL rank, the
   SVD step pipeline with two stages sharing the GPU.

Without CUDA it says so and exits 0, measuring nothing. `run(device, sizes)` is the whole
logic; tests/integration/test_gpu_check.py runs it at TINY sizes on the CPU (host twins of the CUDA
streams, events and pinning) so this script cannot rot.
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results-gpu.json"
GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """The model and run sizes of one gpu-check."""

    dim: int = 5120
    ffn_dim: int = 13824
    blocks: int = 40
    frames: int = 21  # latent frames: 81 video frames
    height: int = 60  # latent 832 x 480 / 8
    width: int = 104
    text_tokens: int = 512
    swaps: tuple = (10, 20, 40)
    prefetches: tuple = (0, 1, 2)
    seedvr: tuple = ("seedvr2_3b", "seedvr2_7b")
    seedvr_frames: int = 21
    seedvr_size: tuple = (720, 1280)
    seedvr_tiny: bool = False  # the tiny SeedVR configs instead of the official ones
    mode_devices: str = "cuda:0,cuda:0"

    @property
    def tokens(self) -> int:
        return self.frames * (self.height // 2) * (self.width // 2)


FULL = Sizes()
TINY = Sizes(dim=128, ffn_dim=256, blocks=4, frames=1, height=8, width=8, text_tokens=6, swaps=(2, 4),
             prefetches=(0, 1), seedvr=("seedvr2_3b",), seedvr_frames=5, seedvr_size=(32, 48), seedvr_tiny=True,
             mode_devices="cpu:0,cpu:0")  # one device named twice, as cuda:0,cuda:0


class Timer:
    """Seconds of `fn()` on `device`: CUDA events on a GPU, the host clock elsewhere (work is done when issued)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def figure(value, unit: str, better: str, what: str) -> dict:
    return {"value": float(value), "unit": unit, "better": better, "what": what}


def random_wan(sizes: Sizes, device: torch.device):
    """ComfyUI's WanModel at `sizes`, bf16 (fp32 on the CPU), random weights made on the device."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = WanModel(model_type="t2v", dim=sizes.dim, ffn_dim=sizes.ffn_dim, num_heads=sizes.dim // 128,
                     num_layers=sizes.blocks, text_dim=4096, in_dim=16, out_dim=16, freq_dim=256, device="meta",
                     dtype=dtype, operations=comfy.ops.disable_weight_init)
    model = model.to_empty(device=device).eval()
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0.0, 0.02, generator=generator)
    return model


class HostCopies:
    """Each block's tensors in host memory, pageable and page-locked (pinning by device type), made once."""

    def __init__(self, blocks, device: torch.device):
        from comfyui_parallel.offload.streams import pin

        self.pageable = [[t.detach().cpu() for t in block.parameters()] for block in blocks]
        self.pinned = [[pin(t, device)[0] for t in tensors] for tensors in self.pageable]
        self.on_device = device

    def place(self, blocks, swapped: set, pinned: bool) -> None:
        """Swapped blocks on the host copies, the others copied to the device."""
        copies = self.pinned if pinned else self.pageable
        for index, block in enumerate(blocks):
            for param, host in zip(block.parameters(), copies[index]):
                param.data = host if index in swapped else host.to(self.on_device)


def offload_sweep(sizes: Sizes, device: torch.device) -> dict:
    """Step time resident vs swapped x prefetch x pinned, and the measured weight peak against the plan."""
    from comfyui_parallel.offload.ledger import planned_peak, swapped_indices
    from comfyui_parallel.offload.swap import OffloadConfig, disable_offload, enable_offload

    model = random_wan(sizes, device)
    blocks = model.blocks
    sizes_b = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    other = sum(p.numel() * p.element_size() for p in model.parameters()) - sum(sizes_b)
    copies = HostCopies(blocks, device)
    generator = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, 16, sizes.frames, sizes.height, sizes.width, device=device, generator=generator,
                    dtype=next(model.parameters()).dtype)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, sizes.text_tokens, 4096, device=device, dtype=x.dtype, generator=generator)
    timer = Timer(device)

    def step():
        with torch.inference_mode():
            return model(x, t, context)

    def measure(swap: int, prefetch: int, pinned: bool) -> tuple:
        """(seconds, bytes the step added on the device, output, the ledger's peak) of one config."""
        copies.place(blocks, set(swapped_indices(len(blocks), swap)), pinned)
        offloader = enable_offload(blocks, OffloadConfig(swap, prefetch, pin_memory=False, compute_device=device))
        try:
            step()  # warm-up: kernels chosen, allocator warm
            reset_peak(device)
            base = peak_bytes(device)
            out = []
            seconds = timer(lambda: out.append(step()))
            return seconds, peak_bytes(device) - base, out[0], offloader.ledger.peak_bytes + other
        finally:
            disable_offload(blocks)

    resident_s, activations, expected, _ = measure(0, 0, False)  # a resident step adds only activations
    results = {"offload_step_s_resident": figure(resident_s, "s", "lower",
                                                f"one forward, {sizes.tokens} tokens, {sizes.blocks} blocks resident")}
    worst_peak, mismatch = 0.0, 0.0
    print(f"   {'swap':>4} {'prefetch':>8} {'pinned':>6} {'step s':>8} {'/resident':>9} {'peak/plan':>9}")
    for swap in sizes.swaps:
        for prefetch in sizes.prefetches:
            for pinned in (True, False):
                seconds, added, out, booked = measure(swap, prefetch, pinned)
                mismatch = max(mismatch, (out.float() - expected.float()).abs().max().item())
                plan = planned_peak(sizes_b, swap, prefetch, other)
                resident_weights = other + sum(sizes_b[: len(sizes_b) - swap])
                # measured on a GPU; the host twins copy nothing, so there the ledger's bookings stand in
                peak = resident_weights + added - activations if device.type == "cuda" else booked
                ratio = peak / plan
                worst_peak = max(worst_peak, ratio)
                name = f"offload_step_ratio_swap{swap}_prefetch{prefetch}_{'pinned' if pinned else 'pageable'}"
                results[name] = figure(seconds / resident_s, "x", "lower",
                                       f"step time / resident, {swap} of {sizes.blocks} blocks swapped, prefetch "
                                       f"{prefetch}, {'pinned' if pinned else 'pageable'} host memory")
                print(f"   {swap:>4} {prefetch:>8} {str(pinned):>6} {seconds:>8.3f} {seconds / resident_s:>9.3f} "
                      f"{ratio:>9.3f}")
    assert mismatch == 0.0, f"offloaded forwards differ from the resident one by {mismatch}"
    half = f"offload_step_ratio_swap{sizes.swaps[len(sizes.swaps) // 2]}_prefetch1_pinned"
    results["offload_slowdown_half_swapped"] = {**results[half], "what": "goal <= 1.05: " + results[half]["what"]}
    results["offload_peak_vs_plan"] = figure(worst_peak, "x", "lower",
                                             "largest measured weight peak (max_memory_allocated less the resident "
                                             "run's activations) / the ledger's planned peak, over every run above")
    return results


def hook_cost(device: torch.device, blocks: int = 8) -> dict:
    """µs the offloader adds per block and forward on the device: tiny Wan, every block swapped, prefetch 1."""
    from comfyui_parallel.offload.swap import OffloadConfig, disable_offload, enable_offload

    sizes = Sizes(dim=128, ffn_dim=256, blocks=blocks, frames=1, height=8, width=8, text_tokens=6)
    model = random_wan(sizes, device)
    x = torch.randn(1, 16, 1, 8, 8, device=device, dtype=next(model.parameters()).dtype)
    t, context = torch.tensor([500.0], device=device), torch.randn(1, 6, 4096, device=device, dtype=x.dtype)
    timer = Timer(device)

    def forwards():
        with torch.inference_mode():
            for _ in range(20):
                model(x, t, context)

    forwards()
    plain = min(timer(forwards) for _ in range(5))
    HostCopies(model.blocks, device).place(model.blocks, set(range(blocks)), pinned=True)
    enable_offload(model.blocks, OffloadConfig(blocks, 1, pin_memory=False, compute_device=device))
    try:
        forwards()
        offloaded = min(timer(forwards) for _ in range(5))
    finally:
        disable_offload(model.blocks)
    per_block = (offloaded - plain) / 20 / blocks * 1e6
    return {"offload_hook_us_per_block_device": figure(per_block, "µs", "lower",
                                                       f"added per block and forward on {device.type} (copies of "
                                                       "tiny blocks included), every block swapped, prefetch 1")}


def run(device: torch.device, sizes: Sizes = FULL) -> dict:
    """Every figure of the gpu-check on `device`; prints a table as it goes."""
    from gpu_check_models import mode_equality, seedvr_peaks, svd_pipeline_equality

    results = {}
    for title, part in (("offload sweep", lambda: offload_sweep(sizes, device)),
                        ("hook cost", lambda: hook_cost(device)),
                        ("SeedVR", lambda: seedvr_peaks(sizes, device)),
                        ("modes on one device", lambda: mode_equality(sizes, device)),
                        ("step pipeline, two stages on one device", lambda: svd_pipeline_equality(sizes, device))):
        print(f"== {title}", flush=True)
        started = time.monotonic()
        results.update(part())
        print(f"   ({time.monotonic() - started:.0f}s)", flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the figures go (default {OUT})")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine: nothing measured, nothing written")
        return 0
    sys.path[:0] = [str(REPO), str(HERE)]
    from devtools.pack import comfy_on_path

    comfy_on_path()
    results = run(torch.device("cuda:0"))
    for name, value in sorted(results.items()):
        print(f"   {name} = {value['value']:.4g} {value['unit']}: {value['what']}")
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(results)} figures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
