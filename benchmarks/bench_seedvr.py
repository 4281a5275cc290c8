"""SeedVR: planned GPU peaks of the 3B / 7B at 720p (DiT and VAE phases), batched window
attention against the per-window loop, and CPU speed of the small model.

1. Planned peaks. The official DiTs and the VAE are built on the meta device (no memory) in bf16
   and run there on 720p-sized inputs under `LiveBytes`, a dispatch mode that adds up the bytes of
   every tensor the run allocates while it is alive: the traced activation peak of the real code,
   no model of it. The DiT phase adds the resident weights from the offload ledger's plan
   (`planned_peak`, prefetch 1); the VAE phases (encode, decode of one chunk) add the VAE's weights.
   The phases run one after the other (the other model waits in host memory), so the run's peak is
   the larger. Reported: the default settings (no block swap, no VAE tiles, chunks of 5 frames at
   1280x720, one step, no CFG pass) with both phases, and the DiT phase of a 21-frame chunk with
   every block swapped, side by side with none.
2. Window attention at a 720p-shaped token grid (6 x 45 x 80 tokens, 21 frames) at the small width
   (2 heads of 32): windows of equal shape batched (up to WINDOW_BATCH_TOKENS tokens a call, the
   default) against one call per window, a plain and a shifted layer, the same outputs checked,
   1 thread. (On the CPU attention is compute-bound at these window sizes: the ratio stays near 1;
   the calls saved matter where each call costs a kernel launch.)
3. CPU seconds per output frame of the tiny random-weight model (2-block DiT width 64, VAE
   32/32/64/64): 9 frames upscaled to 64x96, 1 step (SeedVR2 settings), 1 thread.
"""
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gpu_check import figure  # benchmarks/ is on sys.path (run_all.py, or run from there)

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
BF16 = 2
HEIGHT, WIDTH = 720, 1280


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors allocated inside the mode that are alive now, and their peak.

    A result sharing an input's storage (views, in-place ops) allocates nothing; storages are
    counted once and subtracted when freed. Tensors made before the mode (weights) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = weakref.WeakSet()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage in self._seen or id(storage) in inputs:
                continue
            self._seen.add(storage)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, storage.nbytes())
        return out


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def dit_activation_bytes(dit, latent_frames: int, text_tokens: int = 58) -> int:
    """Traced activation peak of one DiT call on a 720p latent of `latent_frames` frames."""
    with torch.no_grad(), LiveBytes() as live:
        vid = torch.empty(latent_frames, HEIGHT // 8, WIDTH // 8, 2 * 16 + 1, dtype=torch.bfloat16, device="meta")
        txt = torch.empty(text_tokens, dit.cfg.txt_in_dim, dtype=torch.bfloat16, device="meta")
        dit(vid, txt, torch.tensor([1000.0], device="meta"))
    return live.peak


def dit_phase_gib(dit, latent_frames: int, blocks_to_swap: int) -> float:
    """Planned DiT-phase peak: the ledger's resident weights + the traced activations."""
    from comfyui_parallel.offload.ledger import planned_peak

    sizes = [_bytes(block) for block in dit.blocks]
    base = _bytes(dit) - sum(sizes)
    weights = planned_peak(sizes, blocks_to_swap, 1, base_bytes=base)
    return (weights + dit_activation_bytes(dit, latent_frames)) / GIB


def vae_phase_gib(frames: int) -> dict:
    """Planned peaks of encoding and decoding one chunk of `frames` frames at 720p (untiled):
    the VAE's weights + the traced activations, the pixels and the latent on the device included."""
    from comfyui_parallel.models.seedvr.build import meta_vae

    vae = meta_vae().to(torch.bfloat16)
    weights = _bytes(vae)
    with torch.no_grad(), LiveBytes() as live:
        pixels = torch.empty(1, 3, frames, HEIGHT, WIDTH, device="meta")
        latent = vae.encode(pixels)
        encode = live.peak
        del pixels
        live.peak = live.live
        vae.decode(latent)
        decode = live.peak
    return {"encode": (weights + encode) / GIB, "decode": (weights + decode) / GIB}


def planned_peaks() -> dict:
    from comfyui_parallel.models.seedvr.build import meta_dit
    from comfyui_parallel.models.seedvr.pipeline import UpscaleSettings

    results = {}
    chunk = UpscaleSettings().batch_size  # the upscaler's default: 5 frames -> 2 latent frames
    vae = vae_phase_gib(chunk)
    for size in ("3b", "7b"):
        dit = meta_dit(f"seedvr2_{size}").to(torch.bfloat16)
        default_dit = dit_phase_gib(dit, (chunk - 1) // 4 + 1, 0)
        peak = max(default_dit, vae["encode"], vae["decode"])
        print(f"SeedVR {size.upper()} 720p, default settings ({chunk}-frame chunks, no swap, no VAE tiles): DiT phase "
              f"{default_dit:.2f} GiB, VAE encode {vae['encode']:.2f} / decode {vae['decode']:.2f} GiB -> {peak:.2f} GiB")
        results[f"seedvr_{size}_planned_peak_gb_720p"] = figure(round(peak, 3), "GiB", "lower",
            f"planned GPU peak of a {size.upper()} upscale at 1280x720 with the default settings ({chunk}-frame "
                    f"chunks, blocks_to_swap 0, no VAE tiles, bf16): the larger of the DiT phase ({default_dit:.2f} GiB) "
                    f"and the VAE phases (encode {vae['encode']:.2f}, decode {vae['decode']:.2f} GiB); weights + "
                    "activations traced on the meta device")
        swapped, resident = dit_phase_gib(dit, 6, len(dit.blocks)), dit_phase_gib(dit, 6, 0)
        print(f"SeedVR {size.upper()} 720p/21f DiT phase: {resident:.2f} GiB without swap, {swapped:.2f} GiB with all "
              f"{len(dit.blocks)} blocks swapped")
        results[f"seedvr_{size}_resident_peak_gb_720p"] = figure(round(swapped, 3), "GiB", "lower",
            f"planned GPU peak of the {size.upper()} DiT phase at 1280x720, one 21-frame chunk, bf16, every "
                    f"block swapped, prefetch 1 (without swap: {resident:.2f} GiB); the VAE phases are not in it "
                    "(see seedvr_*_planned_peak_gb_720p); ledger plan + activations traced on the meta device")
    return results


def window_attention_seconds(repeats: int = 3) -> tuple:
    """(batched seconds, per-window seconds, windows, batched calls) for a plain + a shifted layer."""
    from comfyui_parallel.models.seedvr import config
    from comfyui_parallel.models.seedvr.dit import WINDOW_BATCH_TOKENS, WindowAttention
    from comfyui_parallel.models.seedvr.window import group_windows, make_windows

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg, grid = config.small_dit("v2"), (6, HEIGHT // 16, WIDTH // 16)
    layers = [WindowAttention(cfg, shared=False, shifted=shifted).eval() for shifted in (False, True)]
    vid, txt = torch.randn(*grid, cfg.vid_dim), torch.randn(58, cfg.vid_dim)
    windows = [make_windows(grid, cfg.window, layer.shifted) for layer in layers]

    def run(batch_tokens: int) -> tuple:
        outputs = []
        for layer in layers:
            layer.batch_tokens = batch_tokens
            outputs.append(layer(vid, txt))
        return outputs

    def best(batch_tokens: int) -> tuple:
        outputs, seconds = run(batch_tokens), []
        for _ in range(repeats):
            start = time.process_time()
            run(batch_tokens)
            seconds.append(time.process_time() - start)
        return min(seconds), outputs

    with torch.no_grad():
        batched, batched_out = best(WINDOW_BATCH_TOKENS)
        looped, looped_out = best(0)
    for got, expected in zip(batched_out, looped_out):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    calls = sum(len(group_windows(w, grid, WINDOW_BATCH_TOKENS)) for w in windows)
    return batched, looped, sum(map(len, windows)), calls


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
    results = planned_peaks()
    from comfyui_parallel.models.seedvr.dit import WINDOW_BATCH_TOKENS

    batched, looped, windows, calls = window_attention_seconds()
    print(f"window attention, 720p token grid at width 64: {looped:.3f} s per window vs {batched:.3f} s batched "
          f"({windows} windows in {calls} calls) -> {looped / batched:.2f}x")
    results["seedvr_window_attention_speedup"] = figure(round(looped / batched, 3), "x", "higher",
        f"window attention of a plain + a shifted layer on a 6x45x80 token grid (1280x720, 21 frames) at "
                f"width 64 (2 heads of 32), 1 thread: one call per window ({windows} calls, {looped:.3f} s) vs windows "
                f"of equal shape batched, up to {WINDOW_BATCH_TOKENS} tokens a call ({calls} calls, {batched:.3f} s), "
                f"outputs checked equal (1e-5)")
    seconds = cpu_seconds_per_frame()
    print(f"tiny SeedVR on the CPU: {seconds:.3f} s per frame (64x96, 1 step, 1 thread)")
    results["seedvr_tiny_cpu_seconds_per_frame"] = figure(
        round(seconds, 4), "s", "lower",
        "CPU process seconds per output frame, tiny random-weight SeedVR2-shaped model, 9 frames to 64x96")
    return results


if __name__ == "__main__":
    run()
