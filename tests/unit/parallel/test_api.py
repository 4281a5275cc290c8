"""The utility API and the status report on this machine's CPU, with model files sized from
their safetensors headers (real files for small models, header-only files for huge ones)."""
import json
import struct

import psutil
import pytest
import torch
from safetensors.torch import save_file

from comfyui_parallel.parallel import api
from comfyui_parallel.parallel.status import format_report, gpu_status, read_model_file
from comfyui_parallel.utils.errors import InputError
from tiny_transformer import TinyTransformer, example_inputs


def header_only_file(path, block_bytes: int, blocks: int, other_bytes: int, dtype: str = "BF16"):
    """A safetensors header declaring huge tensors (no data written: only the header is read)."""
    header, offset = {}, 0
    names = [(f"model.diffusion_model.blocks.{i}.ffn.weight", block_bytes) for i in range(blocks)]
    for name, size in [("model.diffusion_model.head.weight", other_bytes)] + names:
        header[name] = {"dtype": dtype, "shape": [size // 2], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_read_model_file_sizes_blocks(tmp_path):
    tensors = {f"blocks.{i}.w": torch.zeros(4, 4) for i in range(3)}
    tensors["head.w"] = torch.zeros(10, dtype=torch.float16)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    info = read_model_file(tmp_path / "m.safetensors")
    assert info.block_sizes == [64, 64, 64] and info.other_bytes == 20
    assert info.total_bytes == 212 and info.precision == "fp32"


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="^model: .*not found"):
        read_model_file(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(InputError, match="corrupt safetensors header"):
        read_model_file(tmp_path / "bad.safetensors")
    (tmp_path / "m.ckpt").write_bytes(b"x" * 100)
    assert read_model_file(tmp_path / "m.ckpt").total_bytes == 100


def test_small_model_fits_one_cpu(tmp_path):
    path = header_only_file(tmp_path / "small.safetensors", 1000, 4, 100)
    config = api.setup_optimal_parallelism(path, "cpu")
    assert config == {"unet_name": "small.safetensors", "base_precision": "bf16", "load_device": "main_device",
                      "parallelism_type": "none", "gpu_ids": "cpu", "enable_block_distribution": False,
                      "memory_reserve_gb": 2.0}
    assert api.setup_optimal_parallelism(path, "cpu,cpu")["parallelism_type"] == "data_parallel"


def test_model_fitting_only_across_devices_gets_a_block_plan(tmp_path):
    usable = psutil.virtual_memory().available - 2 * 1024 ** 3
    path = header_only_file(tmp_path / "mid.safetensors", int(1.5 * usable) // 40 // 2 * 2, 40, 1024)
    config = api.setup_optimal_parallelism(path, "cpu,cpu")
    assert config["parallelism_type"] == "block_distribution" and config["enable_block_distribution"]
    assert config["gpu_ids"] == "cpu,cpu"
    report = format_report(gpu_status("cpu,cpu", path))
    assert "Recommended: block_distribution on cpu:0, cpu:1" in report
    assert "cpu:0: blocks 0-19" in report and "cpu:1: blocks 20-39" in report


def test_model_fitting_nowhere_gets_blocks_to_swap(tmp_path):
    huge = 2 * psutil.virtual_memory().total // 40 // 2 * 2
    path = header_only_file(tmp_path / "huge.safetensors", huge, 40, 1024, dtype="F8_E4M3")
    config = api.setup_optimal_parallelism(path, "cpu")
    assert config["load_device"] == "offload_device" and config["parallelism_type"] == "none"
    assert config["base_precision"] == "default", "an fp8 file keeps its fp8 weights"
    status = gpu_status("cpu", path)
    assert 20 <= status["recommendation"]["blocks_to_swap"] <= 40
    assert "Blocks to swap to the CPU" in format_report(status)


def test_validate_gpu_setup():
    assert api.validate_gpu_setup("cpu,cpu") == (True, "gpu_ids 'cpu,cpu' -> cpu:0, cpu:1 "
                                                       "(simulated devices sharing host RAM)")
    valid, message = api.validate_gpu_setup("abc")
    assert not valid and message.startswith("gpu_ids: 'abc' is not a device id")


def test_print_gpu_status(capsys):
    report = api.print_gpu_status("cpu")
    assert report in capsys.readouterr().out
    assert "CPU (host RAM)" in report and "OK: gpu_ids 'cpu' -> cpu" in report
    assert format_report(gpu_status("0,7")).splitlines()[-1].startswith("INVALID: gpu_ids: GPU")


def test_monitor_memory_usage_runs_and_stops():
    monitor = api.monitor_memory_usage(interval=0.01, duration=0.05)
    monitor.wait()
    assert not monitor.running and monitor.peak_rss > 0


def test_benchmark_reports_each_mode_and_parity():
    torch.set_num_threads(1)
    timings = api.benchmark_multi_gpu_performance(TinyTransformer(depth=2), example_inputs(batch=2),
                                                  num_runs=2, gpu_ids="cpu,cpu")
    assert set(timings) == {"none", "data_parallel", "block_distribution"}
    assert timings["block_distribution"]["max_abs_diff_vs_none"] == 0.0
    assert timings["data_parallel"]["max_abs_diff_vs_none"] < 1e-5
    assert all(t["median_ms"] > 0 and t["runs"] == 2 for t in timings.values())
    with pytest.raises(InputError, match="num_runs"):
        api.benchmark_multi_gpu_performance(TinyTransformer(depth=1), example_inputs(), num_runs=0)
