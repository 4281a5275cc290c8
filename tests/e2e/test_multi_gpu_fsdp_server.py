"""distributed with weight_sharding fsdp through a real ComfyUI server: 2 and 3 gloo workers, each holding
its shard of every block, give the plain graph's latent; fsdp outside distributed is a clear error and
the server goes on."""

import pytest
import torch

from test_multi_gpu import read_latent
from test_multi_gpu_distributed_server import TOLERANCE, distributed, plain_latent  # noqa: F401 (a fixture)


def sharded(gpu_ids: str, **inputs) -> dict:
    prompt = distributed(gpu_ids)
    prompt["1"]["inputs"].update(weight_sharding="fsdp", **inputs)
    return prompt


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
