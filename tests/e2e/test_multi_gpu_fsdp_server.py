"""distributed with weight_sharding fsdp through a real ComfyUI server: 2 and 3 gloo workers, each holding
its shard of every block, give the plain graph's latent; fsdp outside distributed is a clear error and
the server goes on."""

import pytest
import torch

from test_multi_gpu import read_latent, workflow

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # attention on token shards rounds differently in the last bits


def sharded(gpu_ids: str, **inputs) -> dict:
    prompt = workflow("wan_multi_gpu_distributed")
    prompt["1"]["inputs"].update(gpu_ids=gpu_ids, weight_sharding="fsdp", **inputs)
    return prompt


@pytest.fixture(scope="module")
def plain_latent(comfy_server):
    return read_latent(comfy_server.run(workflow("wan_basic")), comfy_server)


@pytest.mark.parametrize("gpu_ids", ["cpu,cpu", "cpu,cpu,cpu"])
def test_fsdp_gives_the_plain_graphs_latent(server, plain_latent, gpu_ids):
    result = server.run(sharded(gpu_ids))
    torch.testing.assert_close(read_latent(result, server), plain_latent, **TOLERANCE)
    assert result.progress and result.progress[-1][2] == 4, "KSampler progress did not reach the websocket"


def test_fsdp_outside_distributed_is_a_clear_error_and_the_server_goes_on(server, plain_latent):
    result = server.run(sharded("cpu,cpu", parallelism_type="data_parallel"))
    assert result.status == "error" and "weight_sharding: fsdp shards the weights" in result.error_text, \
        result.error_text
    torch.testing.assert_close(read_latent(server.run(sharded("cpu,cpu")), server), plain_latent, **TOLERANCE)
