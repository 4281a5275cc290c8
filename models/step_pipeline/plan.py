"""What each stage runs, worked out on the caller's side: segments, stage ranges, models per stage.

The sampled steps are [start_step, end_step) of a `steps`-step schedule, as KSamplerAdvanced's
start_at_step / end_at_step. With a second model the range is cut at boundary_step into two
sampler calls (segments), exactly the two KSamplerAdvanced nodes of ComfyUI's Wan 2.2 templates.
Stages own contiguous ranges of those steps: `even`, `balanced` (by measured per-step
seconds) or `model_boundary` (a cut at every model change, the other stages spread over the
models by their step counts), and a stage holds only the models its steps use.
"""
from dataclasses import dataclass

from ...parallel.pipeline import split_steps
from ...utils.errors import InputError
from ..comfy.sampling import schedule_sigmas
from .stage import Segment, pieces

STAGE_SPLITS = ["model_boundary", "even", "balanced"]
SCHEDULES = ["pipeline", "videos_per_device"]


@dataclass
class PipelineSettings:
    """One step-pipeline sampler call, as plain values (KSamplerAdvanced's, plus the pipeline's)."""
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    num_videos: int
    stage_split: str = "even"
    add_noise: bool = True
    start_step: int = 0
    end_step: int | None = None  # None: to the end of the schedule
    leftover_noise: bool = False  # return_with_leftover_noise: the last sampled sigma is not set to 0
    boundary_step: int | None = None  # with a second model: where it takes over
    schedule: str = "pipeline"

    @property
    def last_step(self) -> int:
        return self.steps if self.end_step is None else min(self.end_step, self.steps)


def check_range(settings: PipelineSettings, two_models: bool) -> None:
    """Refuse a step range with nothing to sample, or a boundary outside it, naming the input."""
    start, end = settings.start_step, settings.last_step
    if not 0 <= start < end:
        raise InputError("start_at_step", f"is {start} with end_at_step {settings.end_step} and {settings.steps} "
                         "steps: nothing to sample", f"0 ≤ start_at_step < min(end_at_step, steps) = {end}")
    if two_models and not start < settings.boundary_step < end:
        raise InputError("boundary_step", f"is {settings.boundary_step}: model_2 would sample no step or all of them",
                         f"strictly between start_at_step {start} and the last step {end}")


def segments(models: list, settings: PipelineSettings) -> list[Segment]:
    """The sampler calls of each video: one per model, with the sigma vector KSamplerAdvanced gives it."""
    start, end = settings.start_step, settings.last_step
    cuts = [start, settings.boundary_step, end] if len(models) == 2 else [start, end]
    out = []
    for index, (model, a, b) in enumerate(zip(models, cuts, cuts[1:])):
        full = schedule_sigmas(model, settings.steps, settings.sampler_name, settings.scheduler)
        sigmas = full[a:b + 1].clone()
        last_call = index == len(models) - 1
        if last_call and b < settings.steps and not settings.leftover_noise:
            sigmas[-1] = 0  # force_full_denoise: KSamplerAdvanced with return_with_leftover_noise disabled
        out.append(Segment(index, a, b, sigmas, settings.add_noise and index == 0))
    return out


def stage_ranges(settings: PipelineSettings, stages: int, segment_list: list[Segment],
                 measured: list[float] | None) -> list[tuple[int, int]]:
    """Global step ranges [a_k, b_k) for the stages."""
    start, end = settings.start_step, settings.last_step
    count = end - start
    if settings.stage_split == "balanced" and measured is not None and len(measured) == count:
        local = split_steps(count, stages, measured)
    elif settings.stage_split == "model_boundary" and len(segment_list) > 1 and stages >= len(segment_list):
        return _by_model(segment_list, stages)
    else:
        local = split_steps(count, stages)
    return [(a + start, b + start) for a, b in local]


def _by_model(segment_list: list[Segment], stages: int) -> list[tuple[int, int]]:
    """A cut at every model change; each further stage goes to the segment with the most steps per stage."""
    counts = [1] * len(segment_list)
    for _ in range(stages - len(segment_list)):
        widest = max(range(len(segment_list)),
                     key=lambda i: (segment_list[i].end - segment_list[i].start) / counts[i])
        counts[widest] += 1
    ranges = []
    for segment, count in zip(segment_list, counts):
        ranges += [(a + segment.start, b + segment.start) for a, b in split_steps(segment.end - segment.start, count)]
    return ranges


def stage_pieces(segment_list: list[Segment], ranges: list[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
    """Per stage, its (segment, start, end) pieces."""
    return [pieces(segment_list, a, b) for a, b in ranges]


def models_of(segment_list: list[Segment], piece_list) -> list[int]:
    """The model indices a stage's pieces use."""
    return sorted({segment_list[index].model for index, _, _ in piece_list})


def as_plain(segment: Segment) -> dict:
    """A segment as plain data for the workers."""
    return {"model": segment.model, "start": segment.start, "end": segment.end, "sigmas": segment.sigmas.clone(),
            "add_noise": segment.add_noise}


def to_segments(plain: list[dict]) -> list[Segment]:
    return [Segment(**item) for item in plain]
