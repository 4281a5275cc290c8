"""SVD Step-Pipeline Sampler through a real ComfyUI server: the bundled small workflow, a refused sampler.

The workflow loads the smallest UNet ComfyUI's detection accepts as SVD (212M parameters, random
weights) with the native UNETLoader, takes precomputed image embeddings with Load Conditioning
(a full-size CLIP ViT-H would dwarf everything else here), runs two stage workers (cpu,cpu) for
two videos and saves them with SaveAnimatedWEBP.
"""
import json
import shutil

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


def test_unsplittable_sampler_is_a_clear_error_and_the_server_stays_up(server, input_dir):
    api = prompt(input_dir)
    api["5"]["inputs"]["sampler_name"] = "dpmpp_2m"
    result = server.run(api, timeout=600)
    assert result.status == "error"
    assert "sampler_name: 'dpmpp_2m'" in result.error_text and "euler_ancestral" in result.error_text
    assert server.process.poll() is None
