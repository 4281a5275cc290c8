"""SVD Step-Pipeline Sampler through a real ComfyUI server: the bundled small workflow, a LoRA and
VideoLinearCFGGuidance against KSampler, a refused sampler.

The workflow loads the smallest UNet ComfyUI's detection accepts as SVD (212M parameters, random
weights) with the native UNETLoader, patches it with VideoLinearCFGGuidance, takes precomputed
image embeddings with Load Conditioning (a full-size CLIP ViT-H would dwarf everything else
here), runs two stage workers (cpu,cpu) for two videos and saves them with SaveAnimatedWEBP.
"""
import json
import shutil

import torch
from safetensors.torch import load_file

from devtools.comfy_server import REPO

WORKFLOW = REPO / "workflows" / "api" / "svd_step_pipeline.json"


def prompt(input_dir) -> dict:
    for name in ("svd_image_embed.safetensors", "svd_image_embed_zero.safetensors"):
        shutil.copy(REPO / "workflows" / "inputs" / name, input_dir / name)
    return json.loads(WORKFLOW.read_text())


def test_bundled_workflow_makes_two_videos_and_a_report(server, input_dir):
    result = server.run(prompt(input_dir), timeout=900)
    assert result.status == "success", result.error_text + server.log_tail()
    videos = [path for path in result.output_files(server.base_dir) if path.suffix == ".webp"]
    assert len(videos) == 1 and videos[0].stat().st_size > 0  # one animated file holding both videos' frames
    report = json.dumps(result.history["outputs"]["9"])
    assert "stage 0: steps [0, 1)" in report and "stage 1: steps [1, 2)" in report and "videos per minute" in report
    assert any(node == "5" and total == 4 for node, _, total in result.progress)  # 2 videos x 2 steps


def test_lora_and_cfg_guidance_video_equals_ksampler_in_the_server(one_thread_server):
    """The server loads comfy_extras by path and keeps patched models loaded: the pipeline must
    still recognise the guidance node and send the LoRA-patched weights."""
    server = one_thread_server
    api = {k: v for k, v in prompt(server.base_dir / "input").items() if k not in ("6", "7", "8", "9")}
    api["11"] = {"class_type": "LoraLoaderModelOnly",
                 "inputs": {"model": ["1", 0], "lora_name": "min_svd_lora.safetensors", "strength_model": 1.0}}
    api["10"]["inputs"]["model"] = ["11", 0]
    api["5"]["inputs"]["num_videos"] = 1
    sampler = {k: api["5"]["inputs"][k] for k in ("model", "positive", "negative", "latent_image", "seed", "steps",
                                                  "cfg", "sampler_name", "scheduler")}
    api["12"] = {"class_type": "KSampler", "inputs": {**sampler, "denoise": 1.0}}
    api["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "svd_ksampler"}}
    api["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "svd_pipeline"}}
    result = server.run(api, timeout=900)
    assert result.status == "success", result.error_text + server.log_tail()
    latents = {path.name.split("_0")[0]: load_file(path)["latent_tensor"]
               for path in result.output_files(server.base_dir) if path.suffix == ".latent"}
    assert torch.equal(latents["svd_pipeline"], latents["svd_ksampler"])


def test_unsplittable_sampler_is_a_clear_error_and_the_server_stays_up(server, input_dir):
    api = prompt(input_dir)
    api["5"]["inputs"]["sampler_name"] = "dpmpp_2m"
    result = server.run(api, timeout=600)
    assert result.status == "error"
    assert "sampler_name: 'dpmpp_2m'" in result.error_text and "euler_ancestral" in result.error_text
    assert server.process.poll() is None
