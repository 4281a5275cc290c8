"""The bundled Multi-GPU workflows in a real ComfyUI server whose simulated devices hold their own tensors.

The server imports devtools/simulated_devices_node.py with its custom nodes, so in its prompt
thread a block or replica on cpu:1 lives there and an op mixing devices raises, as on GPUs. Each
mode's latent equals the plain graph's (UNETLoader) in the same server.
"""
import pytest
import torch

from test_multi_gpu import MODES, read_latent, workflow


@pytest.fixture(scope="module")
def plain_latent(simulated_server):
    return read_latent(simulated_server.run(workflow("wan_basic")), simulated_server)


def test_the_server_runs_with_simulated_devices(simulated_server):
    assert "simulated devices on" in simulated_server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("mode", ["block_distribution", "data_parallel"])
def test_each_mode_gives_the_plain_graphs_latent(simulated_server, plain_latent, mode):
    result = simulated_server.run(workflow(f"wan_multi_gpu_{mode}"))
    tolerance = MODES[mode]
    torch.testing.assert_close(read_latent(result, simulated_server), plain_latent, rtol=tolerance, atol=tolerance)

