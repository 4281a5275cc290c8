"""Block offloading: planned resident memory of real-size Wan models, and hook cost per block.

1. Resident-bytes peak against blocks_to_swap for Wan 2.2 5B and Wan 2.1 14B (bf16), built
   on the meta device with ComfyUI's own WanModel, from the ledger's plan (prefetch 1).
2. Hook cost on the CPU (copies are no-ops there, so this is the pure bookkeeping cost): tiny
   Wan dim 128, 8 blocks, 1 thread, every block swapped, prefetch 1. Paired rounds (plain
   forward and each variant in the same round, shuffled), medians of the differences, each
   divided by the number of modules that variant hooks, counted on the model: this pack's
   offloader through its real ComfyUI wrapper path (enable, forward, disable each call) hooks
   the 8 blocks; diffusers' `apply_group_offloading` (block_level, one block per group) hooks
   the 8 blocks and 9 more modules (the root, the embedding Sequentials' layers); ComfyUI's
   lowvram mode casts every weight module on use. The whole forward's overhead is reported
   beside it (the same work on both sides). Each variant's output is checked equal to the
   plain forward first.
"""
import random
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
ROUNDS = 120
BLOCKS = 8


def meta_wan(dim, ffn_dim, num_layers, in_dim):
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    return WanModel(model_type="t2v", dim=dim, ffn_dim=ffn_dim, num_heads=dim // 128, num_layers=num_layers,
                    text_dim=4096, in_dim=in_dim, out_dim=in_dim, freq_dim=256, device="meta",
                    dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)


def resident_table() -> dict:
    """Planned resident GiB per blocks_to_swap for the real Wan sizes; prints the table."""
    from comfyui_parallel.models.offload.patcher import block_sizes
    from comfyui_parallel.offload.ledger import planned_peak

    models = {"wan22_5b": meta_wan(3072, 14336, 30, 48), "wan21_14b": meta_wan(5120, 13824, 40, 16)}
    peaks = {}
    print(f"   {'model':<10} {'swap':>5} {'resident GiB':>13} (bf16 weights, prefetch 1)")
    for name, model in models.items():
        sizes, other = block_sizes(model)
        for swap in sorted({0, 5, 10, 15, 20, 25, 30, len(sizes)}):
            if swap <= len(sizes):
                peaks[(name, swap)] = planned_peak(sizes, swap, 1, base_bytes=other) / GIB
                print(f"   {name:<10} {swap:>5} {peaks[(name, swap)]:>13.2f}")
    return peaks


def tiny_models():
    """Three copies of the same tiny Wan (ComfyUI loader): plain, diffusers-offloaded, ComfyUI-lowvram."""
    import comfy.sd
    from devtools.demo_models import tiny_wan_state_dict

    state = tiny_wan_state_dict(num_layers=BLOCKS, seed=1)
    return [comfy.sd.load_diffusion_model_state_dict(dict(state)) for _ in range(3)]


def variants():
    """name -> forward callable; the plain one first. Each runs the diffusion model once."""
    from diffusers.hooks import apply_group_offloading

    from comfyui_parallel.models.offload.patcher import OffloadSettings, apply_offload

    plain, for_diffusers, for_lowvram = tiny_models()
    cpu = torch.device("cpu")
    ours = apply_offload(plain, OffloadSettings(blocks_to_swap=BLOCKS, prefetch_blocks=1))
    ours.patch_model(cpu)
    apply_group_offloading(for_diffusers.model.diffusion_model, onload_device=cpu, offload_device=cpu,
                           offload_type="block_level", num_blocks_per_group=1, use_stream=False)
    for_lowvram.load(cpu, lowvram_model_memory=1)  # ComfyUI lowvram: every weight cast on use
    torch.manual_seed(0)
    x, t, context = torch.randn(2, 16, 1, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 6, 4096)

    def call(model, wrappers=None):
        options = {"wrappers": wrappers} if wrappers else {}
        return lambda: model.model.diffusion_model(x, t, context, transformer_options=options)

    calls = {"plain": call(plain), "ours": call(ours, ours.wrappers), "diffusers": call(for_diffusers),
             "comfy_lowvram": call(for_lowvram)}
    hooked = {"ours": BLOCKS,  # the wrapper registers the block hooks for each forward only
              "diffusers": sum("group_offloading" in getattr(m, "_diffusers_hook", None).hooks
                               for m in for_diffusers.model.modules() if hasattr(m, "_diffusers_hook")),
              "comfy_lowvram": sum(hasattr(m, "prev_comfy_cast_weights") for m in for_lowvram.model.modules())}
    return calls, hooked


def paired_overheads(calls: dict) -> dict:
    """Median (variant - plain) seconds per forward over shuffled paired rounds."""
    diffs = {name: [] for name in calls if name != "plain"}
    for _ in range(ROUNDS):
        order = list(calls)
        random.shuffle(order)
        took = {}
        for name in order:
            start = time.perf_counter()
            calls[name]()
            took[name] = time.perf_counter() - start
        for name in diffs:
            diffs[name].append(took[name] - took["plain"])
    return {name: statistics.median(values) for name, values in diffs.items()}


def hook_costs() -> tuple[dict, dict, dict]:
    """(µs per hooked module, µs per forward, hooked module count) of each variant."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls, hooked = variants()
        with torch.inference_mode():
            expected = calls["plain"]()
            for name, call in calls.items():
                assert torch.equal(call(), expected), f"{name} changed the output"
            overheads = paired_overheads(calls)
    finally:
        torch.set_num_threads(threads)
    per_forward = {name: seconds * 1e6 for name, seconds in overheads.items()}
    per_hook = {name: per_forward[name] / hooked[name] for name in per_forward}
    print("   overhead per forward / hooked modules = µs per hook (median of paired rounds): "
          + ", ".join(f"{name} {per_forward[name]:.0f} / {hooked[name]} = {per_hook[name]:.1f}" for name in per_hook))
    return per_hook, per_forward, hooked


def run() -> dict:
    peaks = resident_table()
    per_hook, per_forward, hooked = hook_costs()
    what = "on the CPU (tiny Wan, 8 blocks all swapped, prefetch 1, 1 thread)"
    results = {
        "offload_resident_peak_gb_wan14b_swap20": {
            "value": peaks[("wan21_14b", 20)], "unit": "GiB", "better": "lower",
            "what": f"planned compute-device weights of Wan 2.1 14B (bf16) with 20 of 40 blocks swapped, prefetch 1 "
                    f"(all resident: {peaks[('wan21_14b', 0)]:.1f} GiB)"},
        "offload_forward_overhead_ratio_diffusers": {
            "value": per_forward["diffusers"] / per_forward["ours"], "unit": "x", "better": "lower",
            "what": f"µs diffusers group offloading adds to a forward / µs this pack adds, {what}"},
    }
    names = {"ours": "this pack's offloader via its ComfyUI wrapper", "diffusers": "diffusers apply_group_offloading "
             "block_level", "comfy_lowvram": "ComfyUI lowvram (cast every weight on use)"}
    for key, suffix in (("ours", ""), ("diffusers", "_diffusers"), ("comfy_lowvram", "_comfy_lowvram")):
        results[f"offload_hook_us_per_hook{suffix}"] = {
            "value": per_hook[key], "unit": "µs", "better": "lower",
            "what": f"{names[key]}: µs added per forward ({per_forward[key]:.0f}) / the {hooked[key]} modules it "
                    f"hooks, {what}"}
    return results


if __name__ == "__main__":
    for metric, figure in run().items():
        print(f"{metric} = {figure['value']:.4g} {figure['unit']}")
