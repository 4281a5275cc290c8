"""SeedVR: planned GPU-resident peak of the 3B / 7B DiT at 720p, and CPU speed of the small model.

1. The official DiTs are built on the meta device (no memory) in bf16. The weights' resident
   peak comes from the offload ledger's plan (`planned_peak`, prefetch 1) for blocks_to_swap
   0 .. all; to it is added a modelled activation working set for one block at 1280x720,
   21 frames, batch 1 (latent 6x90x160 -> 21600 tokens): residual + norm + qkv + attention
   output + MLP hidden, bf16. CFG branches run one after the other, so they do not add. The VAE
   is in host memory during this phase. Reported: the lowest peak (every block swapped) and the
   peak without swapping, side by side.
2. CPU seconds per output frame of the tiny random-weight model (2-block DiT width 64, VAE
   32/32/64/64): 9 frames upscaled to 64x96, 1 step (SeedVR2 settings), 1 thread.
"""
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
BF16 = 2


def _bytes(module) -> int:
    return sum(t.numel() * BF16 for t in module.state_dict().values())


def activation_bytes(cfg, tokens: int, text_tokens: int = 64) -> int:
    """Modelled peak activations of one block (bf16): the largest live tensors at once."""
    inner = cfg.heads * cfg.head_dim
    length = tokens + text_tokens
    return length * (3 * cfg.vid_dim + 3 * inner + inner + 2 * cfg.mlp_hidden) * BF16


def resident_peaks(name: str) -> dict:
    """{blocks_to_swap: planned peak GiB} for the official DiT `name` at 720p."""
    from comfyui_parallel.models.seedvr.build import meta_dit
    from comfyui_parallel.offload.ledger import planned_peak

    dit = meta_dit(name)
    sizes = [_bytes(block) for block in dit.blocks]
    base = _bytes(dit) - sum(sizes)
    acts = activation_bytes(dit.cfg, tokens=6 * 45 * 80)
    return {swap: (planned_peak(sizes, swap, 1, base_bytes=base) + acts) / GIB for swap in range(len(sizes) + 1)}


def cpu_seconds_per_frame(frames: int = 9) -> float:
    from comfyui_parallel.models.seedvr import build, config
    from comfyui_parallel.models.seedvr.pipeline import SeedVRModel, UpscaleSettings, upscale

    torch.set_num_threads(1)
    dit, vae = build.small_models(config.small_dit("v2"), config.small_vae())
    model = SeedVRModel(dit, vae, "seedvr2_custom", config.SAMPLER_V2)
    images = torch.rand(frames, 40, 60, 3, generator=torch.Generator().manual_seed(0))
    settings = UpscaleSettings(res_h=64, res_w=96, cfg_scale=1.0, sample_steps=1, batch_size=9)
    emb = torch.randn(6, 32)
    upscale(model, images[:1], emb, None, settings)  # warm-up
    start = time.process_time()
    upscale(model, images, emb, None, settings)
    return (time.process_time() - start) / frames


def run() -> dict:
    results = {}
    for size in ("3b", "7b"):
        peaks = resident_peaks(f"seedvr2_{size}")
        low, full = min(peaks.values()), peaks[0]
        print(f"SeedVR {size.upper()} 720p/21f DiT phase: {full:.2f} GiB without swap, {low:.2f} GiB with "
              f"all {len(peaks) - 1} blocks swapped (bf16 weights from the ledger plan + modelled activations)")
        results[f"seedvr_{size}_resident_peak_gb_720p"] = {
            "value": round(low, 3), "unit": "GiB", "better": "lower",
            "what": f"planned GPU-resident peak of the {size.upper()} DiT at 1280x720, 21 frames, bf16, every block "
                    f"swapped, prefetch 1 (without swap: {full:.2f} GiB); ledger plan + modelled activations"}
    seconds = cpu_seconds_per_frame()
    print(f"tiny SeedVR on the CPU: {seconds:.3f} s per frame (64x96, 1 step, 1 thread)")
    results["seedvr_tiny_cpu_seconds_per_frame"] = {
        "value": round(seconds, 4), "unit": "s", "better": "lower",
        "what": "CPU process seconds per output frame, tiny random-weight SeedVR2-shaped model, 9 frames to 64x96"}
    return results


if __name__ == "__main__":
    run()
