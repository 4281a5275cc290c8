"""gpu_ids parsing and memory queries on this (GPU-less) machine."""
import psutil
import pytest
import torch

from comfyui_parallel.parallel import devices
from comfyui_parallel.utils.errors import InputError


def test_cpu_forms():
    assert devices.parse_gpu_ids("cpu") == [torch.device("cpu")]
    assert devices.parse_gpu_ids(" cpu , cpu ") == [torch.device("cpu", 0), torch.device("cpu", 1)]
    assert devices.parse_gpu_ids("cpu,cpu,cpu") == [torch.device("cpu", i) for i in range(3)]
    assert devices.parse_gpu_ids("cpu:0,cpu:1") == [torch.device("cpu", 0), torch.device("cpu", 1)]


def test_a_device_named_twice_is_shared_with_half_its_free_memory_each():
    shared = devices.parse_gpu_ids("cpu:1,cpu:1,cpu:0")
    assert shared == [torch.device("cpu", 1), torch.device("cpu", 1), torch.device("cpu", 0)]
    assert devices.shared_devices(shared) == [torch.device("cpu", 1)]
    assert devices.shared_devices(devices.parse_gpu_ids("cpu,cpu")) == []  # numbered: two simulated devices
    first, second, alone = devices.free_bytes_each(shared)
    assert first == second and abs(2 * first - alone) <= 2 * 64 * 2**20  # host RAM moves a little between reads


def test_all_without_gpu_is_the_cpu():
    if devices.cuda_count():
        pytest.skip("this machine has GPUs")
    assert devices.parse_gpu_ids("all") == [torch.device("cpu")]


@pytest.mark.parametrize("text, problem", [
    ("abc", "'abc' is not a device id"),
    ("0,7", "does not exist"),
    ("cuda:3", "does not exist"),
    ("", "is empty"),
    ("0,,1", "empty item"),
    ("cpu,0", "mixes CPU and GPU"),
    ("gpu:0", "not a device id"),
])
def test_refused_with_input_name_and_what_exists(text, problem):
    if devices.cuda_count() > 7 and text in ("0,7", "cuda:3"):
        pytest.skip("this machine has those GPUs")
    with pytest.raises(InputError) as err:
        devices.parse_gpu_ids(text)
    message = str(err.value)
    assert message.startswith("gpu_ids: ")
    assert problem in message
    assert "'cpu,cpu'" in message and "'all'" in message


def test_custom_input_name():
    with pytest.raises(InputError, match=r"^devices: "):
        devices.parse_gpu_ids("x", input_name="devices")


def test_cpu_memory_is_host_ram():
    total = psutil.virtual_memory().total
    assert devices.total_bytes("cpu") == total
    assert 0 < devices.free_bytes(torch.device("cpu", 1)) <= total


def test_list_devices_ends_with_cpu():
    infos = devices.list_devices()
    assert len(infos) == devices.cuda_count() + 1
    cpu = infos[-1]
    assert cpu.device.type == "cpu" and cpu.total_bytes >= cpu.free_bytes > 0
    assert cpu.temperature is None
    assert len(devices.list_devices(include_cpu=False)) == devices.cuda_count()


def test_home_device_is_where_tensors_report_they_are(simulated_devices):
    assert devices.home_device(torch.device("cpu", 0)) == torch.device("cpu")
    assert devices.home_device(torch.device("cpu", 1)) == torch.device("cpu", 1)


def test_home_device_of_a_simulated_cpu_in_plain_torch_is_the_host():
    assert devices.home_device(torch.device("cpu", 1)) == torch.device("cpu")


def test_simulated_cpus_are_distinct_devices_cpu_is_cpu_0():
    assert not devices.same_device(torch.device("cpu", 0), torch.device("cpu", 1))
    assert devices.same_device(torch.device("cpu"), torch.device("cpu", 0))
    assert not devices.same_device(torch.device("cpu"), torch.device("meta"))
    assert devices.storage_device(torch.device("cpu", 1)) == torch.device("cpu")
