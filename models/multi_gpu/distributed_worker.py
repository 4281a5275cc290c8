"""Worker side of the distributed mode: functions a WorkerGroup runs, one process per device.

`load_model` rebuilds the server's Wan model from its spec and the weights in shared memory
(zero-copy on the CPU) and makes it sequence parallel; `forward` runs one diffusion-model
call. Ranks form `cfg_degree` sequence groups: the batch (CFG's cond / uncond) is split over
the groups and each group splits its video's tokens over its ranks (Ulysses). Each group's
first rank returns its share of the output; the others return None.
"""
import torch
import torch.distributed as dist

from ...parallel.placement import move_to
from ..comfy.wan import build_wan_model
from ..wan.sequence import install_sequence_parallel


def rank_layout(rank: int, world: int, cfg_degree: int) -> tuple[int, int, int]:
    """(CFG share index, rank inside its sequence group, sequence group size)."""
    size = world // cfg_degree
    return rank // size, rank % size, size


def sequence_groups(ctx, cfg_degree: int) -> list:
    """One process group per CFG share, created once per layout (every rank, in the same order)."""
    groups = ctx.state.setdefault("groups", {})
    if cfg_degree not in groups:
        size = ctx.world_size // cfg_degree
        groups[cfg_degree] = ([dist.group.WORLD] if cfg_degree == 1 else
                              [dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(cfg_degree)])
    return groups[cfg_degree]


def load_model(ctx, spec: dict, weights, token: str, cfg_degree: int) -> str:
    """Build the model unless this token is already loaded; the previous model is dropped first."""
    if ctx.state.get("token") == token:
        return "cached"
    for name in ("model", "weights", "token"):
        ctx.state.pop(name, None)
    model = build_wan_model(spec, weights.open(), ctx.device)
    share, sp_rank, sp_size = rank_layout(ctx.rank, ctx.world_size, cfg_degree)
    install_sequence_parallel(model, sp_rank, sp_size, sequence_groups(ctx, cfg_degree)[share])
    ctx.state.update(model=model, weights=weights, token=token, cfg_degree=cfg_degree)
    return "loaded"


def batch_share(value, batch: int, share: int, shares: int):
    """This share's rows of every tensor whose dim 0 is the batch (nested in dicts / lists)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.chunk(shares, dim=0)[share]
    if isinstance(value, dict):
        return {k: batch_share(v, batch, share, shares) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(batch_share(v, batch, share, shares) for v in value)
    return value


def splits_batch(batch: int, cfg_degree: int) -> bool:
    """Whether the batch is shared out over the CFG groups (else every group runs it all)."""
    return cfg_degree > 1 and batch % cfg_degree == 0


def forward(ctx, token: str, inputs: dict):
    """One diffusion-model call on this rank's share; the group's first rank returns the output."""
    ctx.check_cancelled(sync=True)
    if ctx.state.get("token") != token:
        raise RuntimeError(f"worker {ctx.rank}: model {token} is not loaded (load_model first)")
    cfg_degree = ctx.state["cfg_degree"]
    share, sp_rank, _ = rank_layout(ctx.rank, ctx.world_size, cfg_degree)
    batch = inputs["x"].shape[0]
    if splits_batch(batch, cfg_degree):
        inputs = batch_share(inputs, batch, share, cfg_degree)
    inputs = move_to(inputs, ctx.device)
    options = {"rope_options": inputs["rope_options"]} if inputs.get("rope_options") else {}
    with torch.inference_mode():
        out = ctx.state["model"](inputs["x"], inputs["timestep"], inputs["context"], clip_fea=inputs["clip_fea"],
                                 time_dim_concat=inputs["time_dim_concat"], transformer_options=options,
                                 **inputs["kwargs"])
    return out if sp_rank == 0 else None
