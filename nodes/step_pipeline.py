"""Step-Pipeline Sampler: many videos of any model ComfyUI samples, the steps split into one stage per GPU;
with a second model (Wan 2.2's low-noise expert) each stage holds only the model its steps use."""
from ..models.comfy import management as host
from ..models.comfy.sampling import SAMPLERS, SCHEDULERS
from ..models.step_pipeline.plan import SCHEDULES, STAGE_SPLITS
from ..models.step_pipeline.stage import SPLITTABLE_SAMPLERS
from ..parallel.devices import parse_gpu_ids
from ..utils.errors import Cancelled, InputError

_MEASURED: dict[tuple, list[float]] = {}  # per-step seconds measured by earlier runs, for "balanced"
SAMPLER_TOOLTIP = ("ComfyUI's sampler. Only samplers whose state can be carried between stages run: "
                   + ", ".join(SPLITTABLE_SAMPLERS) + ".")
GPU_IDS_TOOLTIP = ("One pipeline stage per device: '0,1', 'cuda:0,cuda:1', 'all', or 'cpu,cpu' to simulate stages "
                   "as CPU processes. A GPU named twice ('0,0') holds two stages (they pass the latents over gloo: "
                   "NCCL takes one process per GPU).")


def sample_videos(model, positive, negative, latent_image: dict, settings, gpu_ids: str, model_2=None,
                  noise_mask=None):
    """Run the step pipeline for a node: devices from gpu_ids, ComfyUI's progress bar and cancel, balanced
    splits from earlier runs. Returns (the videos' latents in seed order, the report text)."""
    from ..models.step_pipeline.server import run_pipeline
    from ..models.step_pipeline.stage import check_splittable

    check_splittable(settings.sampler_name)
    devices = parse_gpu_ids(gpu_ids)
    sampled = settings.last_step - settings.start_step
    if settings.schedule == "pipeline" and len(devices) > sampled > 0:
        raise InputError("gpu_ids", f"names {len(devices)} stages for {sampled} steps", f"at most {sampled} devices")
    samples = latent_image["samples"]
    key = (id(model.model), id(model_2.model) if model_2 is not None else None, settings.steps,
           settings.start_step, settings.last_step, settings.boundary_step, settings.sampler_name,
           settings.scheduler, tuple(samples.shape), len(devices))
    bar = host.progress_bar(settings.num_videos * max(1, sampled))
    try:
        result = run_pipeline(model, positive, negative, samples, settings, devices, host.comfyui_dir(),
                              measured=_MEASURED.get(key), should_cancel=host.interrupted, model_2=model_2,
                              noise_mask=noise_mask, on_progress=lambda done, total: bar.update_absolute(done, total))
    except Cancelled:
        host.raise_if_interrupted()  # ComfyUI's own "interrupted"
        raise
    _MEASURED[key] = result.step_seconds
    return result.samples, result.report.text()


class PipelineNode:
    """What both step-pipeline nodes return, and where they sit in the menu."""
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "report")
    FUNCTION = "sample"
    CATEGORY = "parallel/sampling"


class StepPipelineSampler(PipelineNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Any model ComfyUI's samplers sample (Wan 2.1 / 2.2, SVD, SD-family), "
                                "optionally LoRA-patched (the patched weights reach every stage) or through "
                                "VideoLinearCFGGuidance / VideoTriangleCFGGuidance. With model_2: the model of "
                                "the first steps (Wan 2.2's high-noise expert). Other model patches are refused."}),
            "add_noise": (["enable", "disable"], {"tooltip": "As in KSamplerAdvanced: start from the seed's noise "
                                                  "(enable) or from the latent as it is (disable)."}),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                   "tooltip": "Seed of the first video; video n uses noise_seed + n, as n "
                                              "KSamplerAdvanced runs (or pairs) would."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip":
                              "Steps of the schedule, as in KSamplerAdvanced; the sampled ones are split into "
                              "one contiguous range per stage (device)."}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale, as in KSamplerAdvanced (both models)."}),
            "sampler_name": (SAMPLERS, {"tooltip": SAMPLER_TOOLTIP}),
            "scheduler": (SCHEDULERS, {"tooltip": "ComfyUI's scheduler; each model's sigma schedule is the one "
                                       "KSamplerAdvanced computes for it."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning (both models)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (both models)."}),
            "latent_image": ("LATENT", {"tooltip": "The latent of one video (e.g. EmptyHunyuanLatentVideo for Wan); "
                                        "every video starts from it with its own seed."}),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip":
                                      "First step sampled, as in KSamplerAdvanced."}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000, "tooltip":
                                    "Step where sampling ends, as in KSamplerAdvanced (past steps: the end)."}),
            "return_with_leftover_noise": (["disable", "enable"], {"tooltip": "As in KSamplerAdvanced: enable "
                                           "keeps the noise left at end_at_step (for a sampler after this one)."}),
            "num_videos": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip": "How many videos to make (seeds "
                                   "noise_seed … noise_seed+n−1); more videos keep the stages busier."}),
            "gpu_ids": ("STRING", {"default": "0,1", "tooltip": GPU_IDS_TOOLTIP}),
            "stage_split": (STAGE_SPLITS, {"default": "model_boundary", "tooltip":
                                           "model_boundary: a stage boundary at boundary_step, so each stage holds "
                                           "one model (each further stage goes to the model with the most steps "
                                           "per stage; one model: as even). even: equal step counts per stage. balanced: split by the "
                                           "per-step times measured by an earlier run with the same settings "
                                           "(even until one has run)."}),
            "schedule": (SCHEDULES, {"default": "pipeline", "tooltip":
                                     "pipeline: the stages own step ranges, the videos flow through them (a stage "
                                     "holds only the models of its steps). videos_per_device: every device "
                                     "samples whole videos from a queue, holding every model. The report says "
                                     "which ran."}),
        }, "optional": {
            "model_2": ("MODEL", {"tooltip": "A second model for the steps from boundary_step on (Wan 2.2's "
                                  "low-noise expert), as a second KSamplerAdvanced with add_noise disabled would "
                                  "run them. Not connected: one model samples every step."}),
            "boundary_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip":
                                      "With model_2: the step where model_2 takes over (the first sampler's "
                                      "end_at_step in ComfyUI's Wan 2.2 templates). 0: the middle of the sampled "
                                      "steps. Ignored without model_2."}),
        }}

    DESCRIPTION = ("Sample num_videos videos with the diffusion steps split into stages, one per device, the videos "
                   "flowing through them; with model_2 (Wan 2.2's two experts) each stage holds only the model its "
                   "steps use. Each video equals the KSamplerAdvanced graph (or pair) for its seed.")

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, num_videos, gpu_ids,
               stage_split, schedule, model_2=None, boundary_step=0):
        from ..models.step_pipeline.plan import PipelineSettings

        settings = PipelineSettings(noise_seed, steps, cfg, sampler_name, scheduler, num_videos, stage_split,
                                    add_noise == "enable", start_at_step, end_at_step,
                                    return_with_leftover_noise == "enable", None, schedule)
        if model_2 is not None:
            middle = (start_at_step + settings.last_step) // 2
            settings.boundary_step = boundary_step or middle
        samples, report = sample_videos(model, positive, negative, latent_image, settings, gpu_ids, model_2,
                                        latent_image.get("noise_mask"))
        out = {k: v for k, v in latent_image.items() if k != "batch_index"}
        out["samples"] = samples
        return (out, report)


NODE_CLASS_MAPPINGS = {"StepPipelineSampler": StepPipelineSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"StepPipelineSampler": "Step-Pipeline Sampler"}
