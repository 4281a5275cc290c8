"""`make gpu-check` at tiny sizes on the CPU: the same logic a GPU run executes, so the script cannot rot.

On the CPU the host twins of CUDA streams, events and pinning run; every offloaded forward must
equal the resident one exactly, the ledger's peak must be the plan, and each parallel mode
(distributed with one gloo rank, the step pipeline's two stages as two CPU processes) must equal
plain. Without CUDA, `main` measures and writes nothing and exits 0.
"""
import sys

import torch

from devtools.comfy_server import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_whole_check_runs_at_tiny_sizes_on_the_cpu(capsys):
    results = gpu_check.run(torch.device("cpu"), gpu_check.TINY)
    for name, value in results.items():
        assert {"value", "unit", "better", "what"} <= value.keys() and value["better"] in ("lower", "higher"), name
    swept = [name for name in results if name.startswith("offload_step_ratio_")]
    assert len(swept) == 2 * 2 * 2  # swaps x prefetches x pinned / pageable
    assert results["offload_peak_vs_plan"]["value"] == 1.0  # the ledger booked exactly the plan
    assert results["offload_slowdown_half_swapped"]["value"] > 0
    assert results["seedvr_3b_dit_peak_gb_720p_measured"]["value"] == 0.0  # no device memory on the CPU
    for mode in ("data_parallel", "block_distribution", "distributed", "svd_pipeline_2stages"):
        assert results[f"mode_{mode}_max_abs_diff_one_gpu"]["value"] <= 1e-4, mode
    printed = capsys.readouterr().out
    assert "== offload sweep" in printed and "peak/plan" in printed


def test_without_cuda_nothing_is_measured_or_written(tmp_path, capsys):
    out = tmp_path / "results-gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out and not out.exists()
