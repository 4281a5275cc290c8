"""block_distribution's placement is planned when ComfyUI loads the model, from the free memory then, and
the main device's blocks stay with ComfyUI's own loading (its partial unload / lowvram path frees them).

Runs on simulated devices with gpu_ids "cpu:1,cpu:2": the main device cpu:1 is not the host, so
ComfyUI's offload device (cpu) really is elsewhere and its partial unload really moves weights.
The free memory the planner reads is set per device (parallel.devices.free_bytes), as a GPU would report it.
"""
import pytest
import torch

from multi_gpu_helpers import load_wan_layers, sample  # configures ComfyUI for the CPU first

import comfy.model_management  # noqa: E402
from comfyui_parallel.models.multi_gpu import load_plan  # noqa: E402
from comfyui_parallel.models.multi_gpu.patcher import placement_of  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402
from comfyui_parallel.parallel import devices  # noqa: E402
from comfyui_parallel.parallel.plan import module_bytes  # noqa: E402

LAYERS = 6
STEPS = 2
pytestmark = pytest.mark.usefixtures("simulated_devices")


@pytest.fixture(scope="module")
def reference():
    return run(load_wan_layers(LAYERS))


@pytest.fixture
def free(monkeypatch):
    """Free bytes per device ("cpu:1", "cpu:2") as the planner reads them."""
    values = {}
    monkeypatch.setattr(devices, "free_bytes", lambda device: values[str(torch.device(device))])
    comfy.model_management.unload_all_models()
    return values


def run(model) -> torch.Tensor:
    return sample(model, steps=STEPS)


def distributed_model():
    model = load_wan_layers(LAYERS)
    return apply_multi_gpu(model, resolve(model, MultiGPURequest("block_distribution", "cpu:1,cpu:2")))


def sizes(model) -> tuple[int, int]:
    """(bytes of one block, bytes of the rest: embeddings, head)."""
    blocks = model.model.diffusion_model.blocks
    block = module_bytes(blocks[0])
    return block, module_bytes(model.model) - LAYERS * block


def test_planned_from_free_memory_at_load_not_at_model_size(free, reference):
    model = distributed_model()
    block, rest = sizes(model)
    free.update({"cpu:1": rest + block, "cpu:2": 100 * block})  # the main device still holds other models
    early = model.model_size()  # ComfyUI asks before it frees memory for the load
    assert early <= rest + block and placement_of(model.model) is None
    free["cpu:1"] = 100 * block  # ComfyUI made room
    torch.testing.assert_close(run(model), reference, rtol=0, atol=0)
    placement = placement_of(model.model)
    assert placement.capacities == [100 * block, 100 * block]
    assert placement.assignment == load_plan.plan([block] * LAYERS, [100 * block] * 2, rest).assignment
    assert len(placement.main_blocks()) > (early - rest) // block
    assert model.model_size() == rest + block * len(placement.main_blocks())


def test_placed_again_when_the_free_memory_changed(free, reference):
    model = distributed_model()
    block, rest = sizes(model)
    free.update({"cpu:1": rest + 2 * block, "cpu:2": 100 * block})
    run(model)
    first = placement_of(model.model)
    free["cpu:1"] = 100 * block  # another model left the main device
    torch.testing.assert_close(run(model), reference, rtol=0, atol=0)
    second = placement_of(model.model)
    assert second is not first and len(second.main_blocks()) > len(first.main_blocks())
    blocks = model.model.diffusion_model.blocks
    assert [blocks[i].self_attn.q.weight.device for i in sorted(second.main_blocks())] == \
        [torch.device("cpu", 1)] * len(second.main_blocks())
    free["cpu:1"] += block // 2  # less than a block: the placement stays
    run(model)
    assert placement_of(model.model) is second


def test_comfyuis_partial_unload_frees_main_device_blocks(free, reference):
    model = distributed_model()
    block, rest = sizes(model)
    free.update({"cpu:1": 100 * block, "cpu:2": 100 * block})
    run(model)
    main = sorted(placement_of(model.model).main_blocks())
    elsewhere = sorted(set(range(LAYERS)) - set(main))
    assert main and elsewhere
    freed = model.partially_unload(model.offload_device, memory_to_free=rest + len(main) * block)
    assert freed > rest, "only the embeddings and head could be unloaded"
    blocks = model.model.diffusion_model.blocks
    assert any(blocks[i].self_attn.q.weight.device == torch.device("cpu") for i in main)
    assert all(blocks[i].self_attn.q.weight.device == torch.device("cpu", 2) for i in elsewhere)
    # the next sampling runs the unloaded blocks through ComfyUI's cast-per-op lowvram path
    torch.testing.assert_close(run(model), reference, rtol=0, atol=0)
    assert placement_of(model.model).main_blocks() == set(main)


def test_a_lowvram_load_keeps_the_placement_and_the_result(free, reference):
    model = distributed_model()
    block, rest = sizes(model)
    free.update({"cpu:1": 100 * block, "cpu:2": 100 * block})
    run(model)
    placement = placement_of(model.model)
    model.partially_unload(model.offload_device, memory_to_free=10 ** 12)
    model.load(torch.device("cpu", 1), lowvram_model_memory=rest + block)  # ComfyUI's partial load
    assert model.loaded_size() < rest + len(placement.main_blocks()) * block
    torch.testing.assert_close(run(model), reference, rtol=0, atol=0)
    assert placement_of(model.model) is placement
