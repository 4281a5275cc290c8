"""The bundled Multi-GPU and Offload workflows in a real ComfyUI server on simulated devices.

The server imports devtools/simulated_devices_node.py with its custom nodes: in its prompt thread
a tensor on cpu:1 or cpu:2 lives there and an op mixing devices raises, as on GPUs, and ComfyUI
itself computes on cpu:1 (its "GPU"; the host is its offload device). Each workflow's latent
equals the plain graph's (UNETLoader), which equals the plain graph's in an ordinary server.
"""
import pytest
import torch

from test_multi_gpu import MODES, read_latent, workflow


@pytest.fixture(scope="module")
def plain_latent(simulated_server):
    return read_latent(simulated_server.run(workflow("wan_basic")), simulated_server)


def test_the_server_computes_on_a_simulated_gpu(simulated_server, comfy_server, plain_latent):
    log = simulated_server.log_path.read_text(errors="replace")
    assert "simulated devices on" in log and "ComfyUI computes on the simulated device cpu:1" in log
    ordinary = read_latent(comfy_server.run(workflow("wan_basic")), comfy_server)
    torch.testing.assert_close(plain_latent, ordinary, rtol=0, atol=0)


@pytest.mark.parametrize("gpu_ids", ["cpu:1,cpu:2", "cpu,cpu"])
@pytest.mark.parametrize("mode", ["block_distribution", "data_parallel"])
def test_each_mode_gives_the_plain_graphs_latent(simulated_server, plain_latent, mode, gpu_ids):
    prompt = workflow(f"wan_multi_gpu_{mode}")
    prompt["1"]["inputs"]["gpu_ids"] = gpu_ids
    result = simulated_server.run(prompt)
    tolerance = MODES[mode]
    torch.testing.assert_close(read_latent(result, simulated_server), plain_latent, rtol=tolerance, atol=tolerance)


def test_offload_copies_to_the_simulated_gpu_and_gives_the_plain_latent(simulated_server, plain_latent):
    """The workflow swaps one block: computed on its host weights it would mix cpu and cpu:1 and fail."""
    result = simulated_server.run(workflow("offload_wan"))
    torch.testing.assert_close(read_latent(result, simulated_server), plain_latent, rtol=0, atol=0)
