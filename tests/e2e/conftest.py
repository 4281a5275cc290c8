"""A real ComfyUI server, started once for the end-to-end tests, with the pack installed."""
import shutil

import psutil
import pytest

from devtools.comfy_server import REPO, ComfyServer


def server_base(tmp_path_factory, models_cache, name: str):
    """A server's base directory: the models cache as models/, the bundled workflow inputs in input/."""
    base = tmp_path_factory.mktemp(name)
    (base / "models").symlink_to(models_cache, target_is_directory=True)
    (base / "input").mkdir()
    for item in (REPO / "workflows" / "inputs").iterdir():
        shutil.copy2(item, base / "input" / item.name)
    return base


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, models_cache):
    base = server_base(tmp_path_factory, models_cache, "comfy-base")
    server = ComfyServer(base, env={"OMP_NUM_THREADS": "2"}).start()
    yield server
    server_pid = server.process.pid
    children = [p.pid for p in server.descendants()]
    left = server.stop()
    assert left == [], f"processes left behind: {left}"
    for pid in [server_pid, *children]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def server(comfy_server):
    """The shared server, checked alive and with an empty queue before each test."""
    assert comfy_server.process.poll() is None, comfy_server.log_tail()
    comfy_server.get("/queue")
    return comfy_server


@pytest.fixture
def input_dir(comfy_server):
    path = comfy_server.base_dir / "input"
    yield path
    for item in path.iterdir():
        if item.is_file() and item.name.startswith("test_"):
            item.unlink()
        elif item.is_dir() and item.name.startswith("test_"):
            shutil.rmtree(item)


@pytest.fixture(scope="module")
def one_thread_server(tmp_path_factory, models_cache):
    """A server of its own computing on one thread, as the stage workers do: float sums then group
    the same way in the plain graph and in the stages, so their latents can be compared bit for bit."""
    base = server_base(tmp_path_factory, models_cache, "comfy-one-thread")
    server = ComfyServer(base, env={"OMP_NUM_THREADS": "1"}).start()
    yield server
    assert server.stop() == []


@pytest.fixture(scope="module")
def flagged_server(tmp_path_factory, models_cache):
    """A server of its own started with attention, --fast, --reserve-vram and --deterministic flags."""
    base = server_base(tmp_path_factory, models_cache, "comfy-flags")
    flags = ["--use-split-cross-attention", "--reserve-vram", "1.5", "--fast", "fp16_accumulation", "--deterministic"]
    server = ComfyServer(base, extra_args=flags, env={"OMP_NUM_THREADS": "2"}).start()
    yield server
    assert server.stop() == []


@pytest.fixture(scope="module")
def simulated_server(tmp_path_factory, models_cache):
    """A server of its own whose cpu:1, cpu:2, ... are simulated devices holding their own tensors
    (devtools/simulated_devices_node.py), ComfyUI itself computing on cpu:1 as on a GPU: placements
    and offloading there really move tensors between devices."""
    base = server_base(tmp_path_factory, models_cache, "comfy-simulated")
    env = {"OMP_NUM_THREADS": "2", "COMFYUI_PARALLEL_SIMULATED_GPU": "cpu:1"}
    server = ComfyServer(base, env=env, simulated_devices=True).start()
    yield server
    assert server.stop() == []
