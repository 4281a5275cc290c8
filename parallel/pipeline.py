"""Step pipeline: the diffusion steps split into stages, many samples flowing through them.

Stage k owns steps [a_k, b_k) of one schedule and works on sample n at tick n + k, so with
N samples and K stages every stage is busy for N ticks out of N + K - 1 (the ideal speedup
over one device is K·N / (N + K - 1)). Between stages the sample's state (a dict of tensors:
the latent and whatever sampler state travels with it) moves with torch.distributed
send/recv, gloo on the CPU and nccl on GPUs. Plain PyTorch: no ComfyUI here.
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..utils.errors import Cancelled, InputError
from .backend import current_message_device

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64, torch.int32]
_HEADER_LEN = 12  # dtype code, ndim, up to 8 dims, name length, spare


def split_steps(steps: int, stages: int, step_costs: Sequence[float] | None = None,
                input_name: str = "gpu_ids") -> list[tuple[int, int]]:
    """Contiguous step ranges [a_k, b_k) for K stages: even sizes, or balanced by per-step cost.

    Balanced minimises the most expensive stage (each stage keeps at least one step); with equal
    costs it gives the even split.
    """
    if stages < 1:
        raise InputError(input_name, "names no device", "at least one device")
    if steps < stages:
        raise InputError(input_name, f"names {stages} stages but there are only {steps} steps",
                         f"at most {steps} devices, or more steps")
    if step_costs is None:
        base, extra = divmod(steps, stages)
        sizes = [base + (1 if k < extra else 0) for k in range(stages)]
        return _ranges(sizes)
    if len(step_costs) != steps:
        raise ValueError(f"step_costs has {len(step_costs)} entries for {steps} steps")
    return _balanced(list(map(float, step_costs)), stages)


def _ranges(sizes: list[int]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    return ranges


def _balanced(costs: list[float], stages: int) -> list[tuple[int, int]]:
    """Minimax contiguous partition by dynamic programming (steps are few, so O(S²K) is nothing)."""
    steps = len(costs)
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    inf = float("inf")
    best = [[inf] * (steps + 1) for _ in range(stages + 1)]
    cut = [[0] * (steps + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for end in range(k, steps - (stages - k) + 1):
            for start in range(k - 1, end):
                value = max(best[k - 1][start], prefix[end] - prefix[start])
                if value < best[k][end] - 1e-12:
                    best[k][end], cut[k][end] = value, start
    bounds, end = [], steps
    for k in range(stages, 0, -1):
        bounds.append((cut[k][end], end))
        end = cut[k][end]
    return bounds[::-1]


def schedule(num_samples: int, num_stages: int) -> list[list[tuple[int, int]]]:
    """Per tick, the (stage, sample) pairs that run: stage k works on sample n at tick n + k."""
    ticks = num_samples + num_stages - 1
    return [[(k, t - k) for k in range(num_stages) if 0 <= t - k < num_samples] for t in range(ticks)]


def ideal_speedup(num_stages: int, num_samples: int) -> float:
    """Speedup of a perfectly balanced pipeline over one device: K·N / (N + K − 1)."""
    return num_stages * num_samples / (num_samples + num_stages - 1)


# --- moving a sample's state between stages --------------------------------------------------

def send_tensors(tensors: dict[str, torch.Tensor], dst: int) -> list:
    """Start sending a dict of tensors to rank dst; returns the pending works (wait on them later).

    Wire format: a count, then per tensor a fixed-size header (dtype, shape, name length), the
    name's bytes and the data. Sends are asynchronous so that a stage never blocks on a
    neighbour that has not reached its receive yet.
    """
    device = current_message_device()
    parts = [torch.tensor([len(tensors)], dtype=torch.int64)]
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        if tensor.dim() > _HEADER_LEN - 3 or tensor.dtype not in _DTYPES:
            raise ValueError(f"cannot send {name}: {tensor.dtype} with {tensor.dim()} dims")
        encoded = torch.tensor(list(name.encode()), dtype=torch.uint8)
        header = [_DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape]
        header += [0] * (_HEADER_LEN - 1 - len(header)) + [len(encoded)]
        parts += [torch.tensor(header, dtype=torch.int64), encoded, tensor]
    return [(part, dist.isend(part, dst)) for part in (p.to(device) for p in parts)]


def recv_tensors(src: int) -> dict[str, torch.Tensor]:
    """Receive what send_tensors sent from rank src (tensors land on this rank's comm device)."""
    device = current_message_device()
    count = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(count, src)
    tensors = {}
    for _ in range(int(count.item())):
        header = torch.zeros(_HEADER_LEN, dtype=torch.int64, device=device)
        dist.recv(header, src)
        code, ndim, *rest = header.tolist()
        encoded = torch.zeros(rest[-1], dtype=torch.uint8, device=device)
        dist.recv(encoded, src)
        data = torch.empty(rest[:ndim], dtype=_DTYPES[code], device=device)
        dist.recv(data, src)
        tensors[bytes(encoded.cpu().tolist()).decode()] = data
    return tensors


def wait_sent(pending: list) -> None:
    for _, work in pending:
        work.wait()


# --- the stage loop ------------------------------------------------------------------------------

@dataclass
class StageStats:
    """One stage's account: its steps, time computing, the loop's span, which sample ran at which tick,
    and what it holds (names of its models, their resident weight bytes)."""
    stage: int
    steps: tuple[int, int]
    busy_s: float = 0.0
    span_s: float = 0.0
    ticks: list = field(default_factory=list)  # (tick, sample) in the order this stage ran them
    models: tuple = ()
    weight_bytes: int = 0

    @property
    def samples(self) -> int:
        return len(self.ticks)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "steps": list(self.steps), "busy_s": self.busy_s, "span_s": self.span_s,
                "ticks": [list(pair) for pair in self.ticks], "models": list(self.models),
                "weight_bytes": self.weight_bytes}

    @classmethod
    def from_dict(cls, data: dict) -> "StageStats":
        return cls(data["stage"], tuple(data["steps"]), data["busy_s"], data["span_s"],
                   [tuple(pair) for pair in data["ticks"]], tuple(data.get("models", ())), data.get("weight_bytes", 0))


@dataclass
class StageLoop:
    """What a stage worker runs: `work(sample_index, state_in) -> state_out` for each sample in order.

    The loop goes tick by tick (stage k works on sample t - k at tick t). Stage 0 gets state_in
    None (it starts each sample); later stages receive the previous stage's state. The last
    stage keeps its outputs. At every tick the stages vote on cancel (an all-reduce of one
    flag), so they stop together and none is left blocked in a receive: gloo's waits cannot be
    interrupted, so polling a pending receive for cancel is not an option.
    """
    rank: int
    world_size: int
    num_samples: int
    steps: tuple[int, int]
    check_cancelled: Callable[[], None] | None = None
    outputs: list = field(default_factory=list)

    def run(self, work: Callable[[int, dict | None], dict]) -> StageStats:
        stats = StageStats(self.rank, self.steps)
        dist.barrier()
        begin, self._pending = time.perf_counter(), []
        ticks = self.num_samples + self.world_size - 1
        for tick in range(ticks):
            self._vote_cancel(tick)
            sample = tick - self.rank
            if not 0 <= sample < self.num_samples:
                continue
            state = None if self.rank == 0 else recv_tensors(self.rank - 1)
            started = time.perf_counter()
            state = work(sample, state)
            stats.busy_s += time.perf_counter() - started
            stats.ticks.append((tick, sample))
            wait_sent(self._pending)
            if self.rank < self.world_size - 1:
                self._pending = send_tensors(state, self.rank + 1)
            else:
                self.outputs.append(state)
        self._vote_cancel(ticks)  # a cancel seen during the last tick
        wait_sent(self._pending)
        stats.span_s = time.perf_counter() - begin
        return stats

    def _vote_cancel(self, tick: int) -> None:
        """Every stage learns whether any stage was cancelled; all raise together at this tick.

        Before raising, a stage takes the state its predecessor sent in the previous tick, so no
        message is left in flight and the process group stays usable for the next run.
        """
        local_error = None
        if self.check_cancelled is not None:
            try:
                self.check_cancelled()
            except Exception as error:  # the worker's own Cancelled type, whatever module it lives in
                local_error = error
        flag = torch.tensor([1 if local_error is not None else 0], dtype=torch.int64, device=current_message_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return
        if self.rank > 0 and 0 <= tick - self.rank < self.num_samples:
            recv_tensors(self.rank - 1)
        wait_sent(self._pending)
        raise local_error or Cancelled(f"stage {self.rank}: cancelled (another stage saw the cancel)")


@dataclass
class PipelineReport:
    """Busy / bubble accounting of one run, for the node's report string.

    schedule "pipeline": the stages own step ranges and every sample passes through all of them;
    "videos_per_device": every stage (device) runs whole samples taken from a queue.
    """
    stages: list[StageStats]
    num_samples: int
    wall_s: float
    schedule: str = "pipeline"

    @property
    def span_s(self) -> float:
        return max(stage.span_s for stage in self.stages)

    @property
    def bubble_fraction(self) -> float:
        """Share of stage-time not spent computing (fill/drain bubbles, imbalance, transfers)."""
        capacity = len(self.stages) * self.span_s
        return max(0.0, 1.0 - sum(stage.busy_s for stage in self.stages) / capacity) if capacity > 0 else 0.0

    @property
    def samples_per_minute(self) -> float:
        return 60.0 * self.num_samples / self.wall_s if self.wall_s > 0 else 0.0

    def text(self, unit: str = "videos") -> str:
        pipelined = self.schedule == "pipeline"
        title = "step pipeline" if pipelined else "videos_per_device"
        lines = [f"{title}: {len(self.stages)} {'stages' if pipelined else 'devices'}, {self.num_samples} {unit}"]
        for stage in self.stages:
            held = f", holds {' + '.join(stage.models)} ({stage.weight_bytes / 2**20:.1f} MiB)" if stage.models else ""
            name = f"stage {stage.stage}:" if pipelined else f"device {stage.stage}: {stage.samples} {unit},"
            lines.append(f"  {name} steps [{stage.steps[0]}, {stage.steps[1]}){held}, busy {stage.busy_s:.2f} s "
                         f"of {stage.span_s:.2f} s")
        ideal = 1 - self.num_samples / (self.num_samples + len(self.stages) - 1) if pipelined else 0.0
        lines.append(f"  bubble fraction {self.bubble_fraction:.3f} (ideal {ideal:.3f})")
        lines.append(f"  {self.samples_per_minute:.2f} {unit} per minute ({self.wall_s:.2f} s wall)")
        return "\n".join(lines)
