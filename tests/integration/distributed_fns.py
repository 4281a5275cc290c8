"""Worker functions the distributed-mode tests run inside the workers (imported there from the pack).

Not collected by pytest (no test_ prefix). Each takes the WorkerContext first.
"""
import time


def slow_blocks(ctx, seconds: float) -> None:
    """Every block of the loaded model sleeps `seconds` before it computes; the blocks entered are counted."""
    ctx.state["blocks_entered"] = 0

    def hook(_module, _args):
        ctx.state["blocks_entered"] += 1
        time.sleep(seconds)

    ctx.state["slow_hooks"] = [block.register_forward_pre_hook(hook) for block in ctx.state["model"].blocks]


def fast_blocks(ctx) -> int:
    """Remove slow_blocks' hooks; the number of blocks entered while they were on."""
    for handle in ctx.state.pop("slow_hooks"):
        handle.remove()
    return ctx.state.pop("blocks_entered")


def comfy_settings(ctx) -> dict:
    """This worker's ComfyUI flags read through the host adapter, and what ComfyUI chose from them."""
    from comfyui_parallel.models.comfy.runtime import comfy_flags

    flags = comfy_flags()  # configures and imports ComfyUI first, as every adapter module does
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    return {"flags": flags, "attention": attention.optimized_attention.__name__, "reserved": mm.EXTRA_RESERVED_VRAM}
