"""Worker side of the distributed mode: functions a WorkerGroup runs, one process per device.

`load_model` rebuilds the server's Wan model from its spec and the weights in shared memory
(zero-copy on the CPU) and makes it sequence parallel; `forward` runs one diffusion-model
call, the ranks voting on Cancel between blocks (CancelVote). Each call lays the ranks out
by the batch it holds (models/multi_gpu/layout.py): CFG groups when the batch splits over
them, else every rank on the one batch's sequence. Each sequence group's first rank returns
its rows of the output; every rank reports the tokens it computed.
"""
import torch
import torch.distributed as dist

from ...offload.streams import Streams
from ...parallel.placement import move_to
from ..comfy.wan import build_wan_model
from ..wan.family import wan_blocks
from ..wan.sequence import install_sequence_parallel
from .layout import batch_share, call_layout, most_cfg_groups
from .remote import file_weights
from .sharding import SHARDED, forward_mode, shard_worker_model


class CancelVote:
    """Pre-hook of every block after the first: the ranks vote on Cancel (an all-reduce of one flag),
    so a Cancel stops a forward within a block or two, every rank at the same block, and the group
    stays up for the next prompt. On CUDA the host first waits until the block before last has run
    on the device (an event; offload/streams.py's host twin on the CPU), so the vote follows the
    device, not the launch queue, while one block of work stays queued."""

    def __init__(self, ctx):
        self.ctx, self.streams, self.previous = ctx, Streams(ctx.device), None

    def __call__(self, _module, _args) -> None:
        if self.previous is not None:
            self.streams.host_wait(self.previous)
        self.previous = self.streams.record_compute()
        self.ctx.check_cancelled(sync=True)


def sequence_groups(ctx, cfg_groups: int) -> list:
    """One process group per CFG share, created once per layout (every rank, in the same order)."""
    groups = ctx.state.setdefault("groups", {})
    if cfg_groups not in groups:
        size = ctx.world_size // cfg_groups
        groups[cfg_groups] = ([dist.group.WORLD] if cfg_groups == 1 else
                              [dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(cfg_groups)])
    return groups[cfg_groups]


def load_model(ctx, spec: dict, weights, token: str, sharding: str = "replicate") -> str:
    """Build the model unless this token is already loaded; the previous model is dropped first.
    sharding fsdp: built on the CPU, then each block sharded over the ranks (models/multi_gpu/sharding.py)."""
    if ctx.state.get("token") == token:
        return "cached"
    for name in ("model", "shard", "weights", "token"):
        ctx.state.pop(name, None)
    local = ctx.rank < spec.get("local_ranks", ctx.world_size)  # else on another machine: the model file
    state = weights.open() if local else file_weights(spec)
    model = build_wan_model(spec, state, ctx.device if sharding != SHARDED else torch.device("cpu"))
    del state
    for cfg_groups in sorted({1, most_cfg_groups(ctx.world_size)}):
        sequence_groups(ctx, cfg_groups)
    shard = install_sequence_parallel(model, ctx.rank, ctx.world_size, dist.group.WORLD)
    vote = CancelVote(ctx)
    for block in wan_blocks(model)[1:]:
        block.register_forward_pre_hook(vote)
    if sharding == SHARDED:
        shard_worker_model(model, ctx.device, ctx.world_size, shared_on_cpu=local and ctx.device.type == "cpu")
    ctx.state.update(model=model, shard=shard, weights=weights, token=token, sharding=sharding)
    return "loaded"


def forward(ctx, token: str, inputs: dict) -> dict:
    """One diffusion-model call on this rank's share: {"out": rows (sequence group's first rank) or None,
    "tokens": the real tokens this rank's blocks computed}."""
    ctx.check_cancelled(sync=True)
    if ctx.state.get("token") != token:
        raise RuntimeError(f"worker {ctx.rank}: model {token} is not loaded (load_model first)")
    batch = inputs["x"].shape[0]
    layout = call_layout(batch, ctx.world_size)
    share, sp_rank = layout.place(ctx.rank)
    shard = ctx.state["shard"]
    shard.use(sp_rank, layout.size, sequence_groups(ctx, layout.groups)[share])
    if layout.groups > 1:
        inputs = batch_share(inputs, batch, share, layout.groups)
    inputs = move_to(inputs, ctx.device)
    options = {"rope_options": inputs["rope_options"]} if inputs.get("rope_options") else {}
    with forward_mode(ctx.state["sharding"], ctx.device):
        out = ctx.state["model"](inputs["x"], inputs["timestep"], inputs["context"], clip_fea=inputs["clip_fea"],
                                 time_dim_concat=inputs["time_dim_concat"], transformer_options=options,
                                 **inputs["kwargs"])
    return {"out": out if sp_rank == 0 else None, "tokens": shard.tokens}
