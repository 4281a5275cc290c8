"""SVD Step-Pipeline Sampler: many SVD videos, the diffusion steps split into one stage per GPU."""
from ..models.comfy.sampling import SAMPLERS, SCHEDULERS
from ..utils.errors import InputError
from .step_pipeline import GPU_IDS_TOOLTIP, SAMPLER_TOOLTIP, PipelineNode, sample_videos

STAGE_SPLITS = ["even", "balanced"]


class SVDStepPipelineSampler(PipelineNode):
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
            "sampler_name": (SAMPLERS, {"tooltip": SAMPLER_TOOLTIP}),
            "scheduler": (SCHEDULERS, {"tooltip": "ComfyUI's scheduler; the one sigma schedule all stages share."}),
            "num_videos": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip":
                                   "How many videos to make (seeds seed … seed+n−1); more videos keep the stages busier."}),
            "gpu_ids": ("STRING", {"default": "0,1", "tooltip": GPU_IDS_TOOLTIP}),
            "stage_split": (STAGE_SPLITS, {"tooltip": "even: equal step counts per stage. balanced: split by the "
                                           "per-step times measured by an earlier run with the same settings "
                                           "(even until one has run)."}),
        }}

    DESCRIPTION = ("Sample num_videos SVD videos with the diffusion steps split into stages, one per device, the "
                   "videos flowing through the stages; each video equals KSampler's for its seed.")

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, num_videos,
               gpu_ids, stage_split):
        from ..models.step_pipeline.plan import PipelineSettings
        from ..models.step_pipeline.stage import check_splittable

        check_splittable(sampler_name)
        samples = latent_image["samples"]
        if samples.ndim != 4:
            raise InputError("latent_image", f"has shape {tuple(samples.shape)}", "an SVD latent: frames × 4 × h × w")
        settings = PipelineSettings(seed, steps, cfg, sampler_name, scheduler, num_videos, stage_split)
        videos, report = sample_videos(model, positive, negative, latent_image, settings, gpu_ids)
        out = {k: v for k, v in latent_image.items() if k not in ("samples", "batch_index", "noise_mask")}
        out["samples"] = videos
        return (out, report)


NODE_CLASS_MAPPINGS = {"SVDStepPipelineSampler": SVDStepPipelineSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SVDStepPipelineSampler": "SVD Step-Pipeline Sampler"}
