"""The simulated devices are real enough to catch placement bugs: a move copies, a mixed op raises,
modules, parameters (`.data =`), factories, autograd and new threads follow the simulated device."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from comfyui_parallel.parallel.devices import parse_gpu_ids
from devtools.simulated_devices import SimTensor

MIXED = "Expected all tensors to be on the same device"
SIMULATED = pytest.mark.usefixtures("simulated_devices")


@SIMULATED
def test_move_copies_and_reports_the_device():
    x = torch.randn(3, 4)
    moved = x.to("cpu:1")
    assert isinstance(moved, SimTensor) and moved.device == torch.device("cpu", 1)
    assert moved.data_ptr() != x.data_ptr()
    moved.mul_(0)
    assert x.abs().sum() > 0
    assert torch.equal(moved.to("cpu"), torch.zeros(3, 4)) and type(moved.to("cpu")) is torch.Tensor


@SIMULATED
def test_mixed_device_op_raises_as_cuda_does():
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match=MIXED):
        _ = x + x.to("cpu:1")
    with pytest.raises(RuntimeError, match=MIXED):
        _ = x.to("cpu:2") * x.to("cpu:1")
    with pytest.raises(RuntimeError, match=MIXED):
        nn.Linear(3, 2).to("cpu:1")(x)


@SIMULATED
def test_gpu_ids_devices_are_distinct_and_cpu_0_is_plain_cpu():
    devices = parse_gpu_ids("cpu,cpu,cpu")
    x = torch.ones(2)
    assert type(x.to(devices[0])) is torch.Tensor
    assert [x.to(d).device for d in devices[1:]] == devices[1:]
    assert (x.to(devices[0]) + x).device == torch.device("cpu")


@SIMULATED
def test_cpu_scalars_mix_with_any_device():
    y = torch.ones(2).to("cpu:1")
    assert (y * torch.tensor(3.0)).device == torch.device("cpu", 1)


@SIMULATED
def test_module_to_and_parameter_data_follow_the_device():
    lin = nn.Linear(4, 2)
    x = torch.randn(5, 4)
    expected = lin(x)
    lin.to("cpu:1")
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.device == torch.device("cpu", 1)
    torch.testing.assert_close(lin(x.to("cpu:1")).to("cpu"), expected, rtol=0, atol=0)
    lin.to("cpu")
    assert type(lin.weight) is nn.Parameter and lin.weight.device == torch.device("cpu")
    lin.weight.data = lin.weight.data.to("cpu:2")
    assert lin.weight.device == torch.device("cpu", 2) and isinstance(lin.weight, nn.Parameter)


@SIMULATED
def test_factories_views_and_autograd():
    y = torch.randn(2, 3).to("cpu:1")
    assert torch.zeros(2, device=y.device).device == y.device
    assert torch.empty_like(y).device == y.device
    view = y.view(3, 2)
    view.add_(1)
    assert torch.equal(view.to("cpu").flatten(), y.to("cpu").flatten())
    w = torch.randn(4, requires_grad=True)
    (w.to("cpu:1") ** 2).sum().backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())


@SIMULATED
def test_threads_started_meanwhile_see_the_devices():
    with ThreadPoolExecutor(1) as pool:
        moved = pool.submit(lambda: torch.ones(2).to("cpu:1")).result()
    assert isinstance(moved, SimTensor)


def test_plain_torch_outside_and_nested_use_keeps_it_on():
    from devtools.simulated_devices import simulated_devices

    assert type(torch.ones(1).to("cpu:1")) is torch.Tensor
    with simulated_devices():
        with simulated_devices():
            pass
        assert isinstance(torch.ones(1).to("cpu:1"), SimTensor)
    assert type(torch.ones(1).to("cpu:1")) is torch.Tensor


def test_simulated_tensors_left_after_the_switch_still_move_back():
    from devtools.simulated_devices import simulated_devices

    lin = nn.Linear(2, 2)
    expected = lin.weight.detach().clone()
    with simulated_devices():
        lin.to("cpu:1")
    lin.to("cpu")
    assert type(lin.weight) is nn.Parameter and torch.equal(lin.weight.detach(), expected)


@SIMULATED
def test_under_inference_mode_as_comfyui_runs_prompts():
    """There `aten.to` itself reaches the dispatch (not only `_to_copy`): it must still copy to the device.
    (ComfyUI's parameters do not require grad; torch's swap_tensors cannot check one that does there.)"""
    lin = nn.Linear(4, 2).requires_grad_(False)
    x = torch.randn(3, 4)
    expected = lin(x)
    with torch.inference_mode():
        lin.to("cpu:1")
        assert lin.weight.device == torch.device("cpu", 1) and isinstance(lin.weight, SimTensor)
        torch.testing.assert_close(lin(x.to("cpu:1")).to("cpu"), expected, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match=MIXED):
            lin(x)
        assert torch.arange(3).to(lin.weight).device == torch.device("cpu", 1)  # aten.to.device: a positional device
