"""Wan 2.2's two experts, one per stage, against one process holding both and against one video per device.

The tiny Wan 2.2 high-noise / low-noise pair (devtools/demo_models.py, loaded by ComfyUI's own
loader) samples 6 videos of a 256 × 256, 9-frame latent with euler, 8 steps, the low-noise expert
from step 4 on. Three settings run through the same code (models/step_pipeline/server.py), side
by side: 1 stage worker × 1 thread holding both experts; 2 stages × 1 thread (stage_split
model_boundary: stage 0 holds only the high-noise expert, stage 1 only the low-noise one);
2 workers × 1 thread with schedule videos_per_device (each holds both, takes whole videos).
Worker start-up and model rebuild are excluded by a warm-up run; then the settings alternate for
a few rounds and the best wall time of each counts. The pipeline's ideal speedup is
K·N / (N + K − 1) (fill and drain ticks), videos_per_device's is K; each worker's resident weight
bytes are read from its rebuilt models. On a machine without two free cores both speedups fall.
"""
import time

VIDEOS, STEPS, BOUNDARY, ROUNDS = 6, 8, 4, 5
LATENT = (1, 16, 3, 32, 32)  # EmptyHunyuanLatentVideo 256 × 256, 9 frames


def run() -> dict:
    import comfy.sd
    import torch

    from comfyui_parallel.models.comfy.runtime import find_comfyui_dir
    from comfyui_parallel.models.step_pipeline import server as pipeline_run
    from comfyui_parallel.parallel.pipeline import ideal_speedup
    from comfyui_parallel.parallel.pool import POOL
    from devtools.demo_models import REPO, TINY_WAN22_HIGH, TINY_WAN22_LOW, ensure_models

    torch.set_num_threads(1)
    folder = ensure_models(REPO / "out" / "models-cache")[0].parents[1] / "diffusion_models"
    high, low = (comfy.sd.load_diffusion_model(str(folder / name)) for name in (TINY_WAN22_HIGH, TINY_WAN22_LOW))
    generator = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    negative = [[torch.randn(1, 8, 4096, generator=generator), {}]]
    latent = torch.zeros(LATENT)
    variants = {"both": (1, "pipeline"), "pipeline": (2, "pipeline"), "per_device": (2, "videos_per_device")}

    def timed(name: str):
        workers, schedule = variants[name]
        settings = pipeline_run.PipelineSettings(0, STEPS, 5.0, "euler", "simple", VIDEOS, "model_boundary",
                                                 boundary_step=BOUNDARY, schedule=schedule)
        devices = [torch.device("cpu", k) for k in range(workers)]
        start = time.perf_counter()
        result = pipeline_run.run_pipeline(high, positive, negative, latent, settings, devices, find_comfyui_dir(),
                                           model_2=low)
        return time.perf_counter() - start, result

    try:
        for name in variants:
            timed(name)  # start workers, rebuild the models
        best, outputs = {name: float("inf") for name in variants}, {}
        for _ in range(ROUNDS):
            for name in variants:
                seconds, result = timed(name)
                if seconds < best[name]:
                    best[name], outputs[name] = seconds, result
    finally:
        POOL.close_feature(pipeline_run.FEATURE)
    for name in ("pipeline", "per_device"):
        assert torch.equal(outputs[name].samples, outputs["both"].samples), f"{name} videos differ from one worker"
    speedup, per_device = best["both"] / best["pipeline"], best["both"] / best["per_device"]
    ideal = ideal_speedup(2, VIDEOS)
    resident = {name: max(stage.weight_bytes for stage in outputs[name].report.stages) / 2**20 for name in variants}
    setting = f"{VIDEOS} videos of the tiny Wan 2.2 pair, {STEPS} steps (boundary {BOUNDARY}), 1 thread per worker"
    figures = {
        "expert_pipeline_speedup_2stages": {"value": speedup, "unit": "x", "better": "higher",
                                            "what": f"1 worker holding both experts / 2 stages one expert each, "
                                                    f"{setting} (bit-identical videos)"},
        "expert_pipeline_efficiency": {"value": speedup / ideal, "unit": "ratio", "better": "higher",
                                       "what": f"expert_pipeline_speedup_2stages / ideal K·N/(N+K−1) = {ideal:.3f}"},
        "videos_per_device_speedup_2workers": {"value": per_device, "unit": "x", "better": "higher",
                                               "what": f"1 worker / 2 workers taking whole videos (ideal 2), "
                                                       f"same run, {setting}"},
        "expert_pipeline_resident_weight_mib_per_device": {
            "value": resident["pipeline"], "unit": "MiB", "better": "lower",
            "what": "largest per-stage weight bytes of the 2-stage pipeline (one expert each)"},
        "videos_per_device_resident_weight_mib_per_device": {
            "value": resident["per_device"], "unit": "MiB", "better": "lower",
            "what": f"per-device weight bytes of videos_per_device (both experts; one worker: {resident['both']:.2f})"},
    }
    for name, figure in figures.items():
        print(f"{name}: {figure['value']:.3f} {figure['unit']} ({figure['what']})")
    print(outputs["pipeline"].report.text())
    print(outputs["per_device"].report.text())
    return figures


if __name__ == "__main__":
    run()
