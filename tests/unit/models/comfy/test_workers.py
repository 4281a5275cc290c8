"""Worker groups started from inside ComfyUI carry its flags to every worker, whatever the feature."""
import json

import comfy.cli_args

from comfyui_parallel.models.comfy.flags import ENV
from comfyui_parallel.models.comfy.workers import group_config


def test_group_config_carries_the_servers_flags_and_the_callers_options():
    args = comfy.cli_args.args
    saved = args.use_pytorch_cross_attention
    args.use_pytorch_cross_attention = True
    try:
        config = group_config(["cpu", "cpu"], "/comfy", threads_per_worker=2, env={"EXTRA": "1"})
    finally:
        args.use_pytorch_cross_attention = saved
    assert config.devices == ["cpu", "cpu"] and config.comfyui_dir == "/comfy" and config.threads_per_worker == 2
    assert json.loads(config.env[ENV])["use_pytorch_cross_attention"] is True and config.env["EXTRA"] == "1"
