"""SVD Step-Pipeline Sampler: many SVD videos, the diffusion steps split into one stage per GPU."""
from ..models.comfy import management as host
from ..models.comfy.sampling import SAMPLERS, SCHEDULERS
from ..models.svd_pipeline.stage import SPLITTABLE_SAMPLERS
from ..parallel.devices import parse_gpu_ids
from ..utils.errors import Cancelled, InputError

STAGE_SPLITS = ["even", "balanced"]
_MEASURED: dict[tuple, list[float]] = {}  # per-step seconds measured by earlier runs, for "balanced"


class SVDStepPipelineSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SVD / SVD-XT model, e.g. from ImageOnlyCheckpointLoader, optionally "
                                "through VideoLinearCFGGuidance or VideoTriangleCFGGuidance and LoRA loaders. Every "
                                "stage worker rebuilds it: LoRA-patched weights go through shared memory, the CFG "
                                "node's patch is re-applied with its min_cfg. Other model patches are refused."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning from SVD_img2vid_Conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning from SVD_img2vid_Conditioning."}),
            "latent_image": ("LATENT", {"tooltip": "The video latent from SVD_img2vid_Conditioning (frames × 4 × h × w)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "Seed of the first video; video n uses seed + n, as n KSampler runs would."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip":
                              "Diffusion steps; they are split into one contiguous range per stage (device)."}),
            "cfg": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale, as in KSampler."}),
            "sampler_name": (SAMPLERS, {"tooltip": "ComfyUI's sampler. Only samplers whose state can be carried "
                                        "between stages run: " + ", ".join(SPLITTABLE_SAMPLERS) + "."}),
            "scheduler": (SCHEDULERS, {"tooltip": "ComfyUI's scheduler; the one sigma schedule all stages share."}),
            "num_videos": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip":
                                   "How many videos to make (seeds seed … seed+n−1); more videos keep the stages busier."}),
            "gpu_ids": ("STRING", {"default": "0,1", "tooltip": "One pipeline stage per device: '0,1', 'cuda:0,cuda:1', "
                                   "'all', or 'cpu,cpu' to simulate stages as CPU processes."}),
            "stage_split": (STAGE_SPLITS, {"tooltip": "even: equal step counts per stage. balanced: split by the "
                                           "per-step times measured by an earlier run with the same settings "
                                           "(even until one has run)."}),
        }}

    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "report")
    FUNCTION = "sample"
    CATEGORY = "parallel/sampling"
    DESCRIPTION = ("Sample num_videos SVD videos with the diffusion steps split into stages, one per device, the "
                   "videos flowing through the stages; each video equals KSampler's for its seed.")

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, num_videos,
               gpu_ids, stage_split):
        from ..models.svd_pipeline.server import PipelineSettings, run_pipeline
        from ..models.svd_pipeline.stage import check_splittable

        check_splittable(sampler_name)
        devices = parse_gpu_ids(gpu_ids)
        if len(devices) > steps:
            raise InputError("gpu_ids", f"names {len(devices)} stages for {steps} steps", f"at most {steps} devices")
        samples = latent_image["samples"]
        if samples.ndim != 4:
            raise InputError("latent_image", f"has shape {tuple(samples.shape)}", "an SVD latent: frames × 4 × h × w")
        settings = PipelineSettings(seed, steps, cfg, sampler_name, scheduler, num_videos, stage_split)
        key = (id(model.model), steps, sampler_name, scheduler, tuple(samples.shape), len(devices))
        bar = host.progress_bar(num_videos * steps)
        try:
            result = run_pipeline(model, positive, negative, samples, settings, devices, host.comfyui_dir(),
                                  measured=_MEASURED.get(key), should_cancel=host.interrupted,
                                  on_progress=lambda done, total: bar.update_absolute(done, total))
        except Cancelled:
            host.raise_if_interrupted()  # ComfyUI's own "interrupted"
            raise
        _MEASURED[key] = result.step_seconds
        out = {k: v for k, v in latent_image.items() if k not in ("samples", "batch_index", "noise_mask")}
        out["samples"] = result.samples
        return (out, result.report.text())


NODE_CLASS_MAPPINGS = {"SVDStepPipelineSampler": SVDStepPipelineSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SVDStepPipelineSampler": "SVD Step-Pipeline Sampler"}
