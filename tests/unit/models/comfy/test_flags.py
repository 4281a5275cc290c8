"""The server's ComfyUI flags as plain data and back on a worker's args (ComfyUI's own cli_args types)."""
import argparse
import json

import comfy.cli_args

from comfyui_parallel.models.comfy.flags import ENV, FORWARDED, apply_from_env, env_entry, flags_of


def defaults() -> argparse.Namespace:
    return comfy.cli_args.parser.parse_args([])


def test_flags_round_trip_through_the_environment():
    server = defaults()
    server.use_sage_attention, server.reserve_vram, server.highvram = True, 2.0, True
    server.fast = {comfy.cli_args.PerformanceFeature.Fp16Accumulation, comfy.cli_args.PerformanceFeature.CublasOps}
    entry = env_entry(flags_of(server))
    assert json.loads(entry[ENV])["fast"] == ["cublas_ops", "fp16_accumulation"]
    worker = defaults()
    assert apply_from_env(worker, comfy.cli_args, env=entry)
    assert flags_of(worker) == flags_of(server) and worker.fast == server.fast
    assert set(flags_of(server)) == {name for name in FORWARDED if hasattr(server, name)}


def test_only_forwarded_names_the_running_comfyui_has_are_set():
    worker = defaults()
    entry = env_entry({"listen": "0.0.0.0", "port": 1, "no_such_flag": True, "lowvram": True})
    apply_from_env(worker, comfy.cli_args, env=entry)
    assert worker.lowvram and worker.listen == defaults().listen and worker.port == defaults().port
    assert not hasattr(worker, "no_such_flag")
    assert not apply_from_env(defaults(), comfy.cli_args, env={})
