"""Worker functions the pipeline tests run inside worker processes (imported there from the pack).

Not collected by pytest (no test_ prefix). Each takes the WorkerContext first.
"""
import time

import torch


def toy_stage(ctx, num_samples: int, ranges: list, pause_s: float = 0.0):
    """A stage of a toy pipeline: each step adds 1 to x; the trace records which stages touched it.

    Sample n starts as x = n; after all stages x = n + total steps and the trace lists every
    stage once, in order, with a uint8 'rng' tensor travelling along unchanged.
    """
    from comfyui_parallel.parallel.pipeline import StageLoop

    start, end = ranges[ctx.rank]

    def work(n, state):
        if state is None:
            state = {"x": torch.full((2, 3), float(n)), "trace": torch.empty(0, dtype=torch.int64),
                     "rng": torch.arange(7, dtype=torch.uint8) + n}
        for _ in range(start, end):
            state["x"] = state["x"] + 1
            time.sleep(pause_s)
        ctx.progress(n + 1, num_samples)
        state["trace"] = torch.cat([state["trace"], torch.tensor([ctx.rank])])
        return state

    loop = StageLoop(ctx.rank, ctx.world_size, num_samples, (start, end), ctx.check_cancelled)
    stats = loop.run(work)
    return {"stats": stats.as_dict(), "outputs": loop.outputs}
