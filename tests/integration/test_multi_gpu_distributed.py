"""distributed mode: worker processes (gloo on the CPU) with Ulysses attention, sampled by ComfyUI in-process.

Each run is compared with the plain single-process run for the same seed. The Wan here has
dim 256 (two heads), so three ranks exercise both head padding and token padding.
"""
import gc
import threading

import pytest
import torch

from multi_gpu_helpers import MoveSpy, load_wan_layers, sample  # configures ComfyUI for the CPU first

import comfy.cli_args  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sd  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402
from comfy_extras.nodes_easycache import EasyCacheNode  # noqa: E402
from comfy_extras.nodes_slg import SkipLayerGuidanceDiT  # noqa: E402
from comfy_extras.nodes_tomesd import TomePatchModel  # noqa: E402
from comfyui_parallel.models.comfy.management import comfyui_dir  # noqa: E402
from comfyui_parallel.models.comfy.runtime import comfy_flags  # noqa: E402
from comfyui_parallel.models.comfy.workers import group_config  # noqa: E402
from comfyui_parallel.parallel.launch import WorkerGroup  # noqa: E402
from comfyui_parallel.parallel.pool import POOL  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402
from comfyui_parallel.models.multi_gpu.wrappers import runner_of  # noqa: E402
from comfyui_parallel.models.multi_gpu.settings import MultiGPURequest, apply_multi_gpu, resolve  # noqa: E402

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # attention on shards rounds differently in the last bits
FNS = "tests.integration.distributed_fns"
TOKENS = 2 * 4 * 4  # tokens of one latent row: LATENT_SHAPE's 2 x 8 x 8 in Wan's 1 x 2 x 2 patches


def wan256():
    from devtools.demo_models import tiny_wan_state_dict

    return comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(dim=256, num_layers=2, seed=3))


def node_output(node, *args, **kwargs):
    """The first output of one of ComfyUI's nodes, V3 (`execute`) or V1 (its FUNCTION): 0.3.52 has both kinds."""
    if hasattr(node, "FUNCTION"):
        return getattr(node(), node.FUNCTION)(*args, **kwargs)[0]
    return node.execute(*args, **kwargs).result[0]


def distributed(model, gpu_ids: str):
    return apply_multi_gpu(model, resolve(model, MultiGPURequest("distributed", gpu_ids)))


@pytest.fixture(scope="module")
def reference():
    return sample(wan256())


@pytest.fixture(scope="module")
def keep_groups():
    """Hold one MODEL per device set for the module, so the tests share started workers."""
    keepers = {ids: distributed(wan256(), ids) for ids in ("cpu,cpu", "cpu,cpu,cpu")}
    for model in keepers.values():
        runner_of(model).lease.get()
    yield keepers
    for model in keepers.values():
        runner_of(model).close()
    gc.collect()
    assert POOL.pids("wan_distributed") == [], "workers outlived every MODEL using them"


@pytest.mark.parametrize("gpu_ids", ["cpu,cpu", "cpu,cpu,cpu"])
def test_distributed_equals_plain(keep_groups, reference, gpu_ids):
    model = distributed(wan256(), gpu_ids)
    with MoveSpy(model.model) as spy:
        torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    block_moves = [move for move in spy.moves if ".blocks" in move[0] or move[0] in ("", "diffusion_model")]
    assert block_moves == [], "the server moved blocks the workers compute"
    runner = runner_of(model)
    assert len(runner.pids) == len(gpu_ids.split(",")) and runner.cfg_degree == 1
    assert runner.pids == runner_of(keep_groups[gpu_ids]).pids, "workers are shared by device set"
    shared = runner.lease.weights
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    assert runner.lease.weights is shared, "the second prompt reused the shared weights"


def test_lora_patch_after_distributed_reaches_the_workers(keep_groups):
    key = "diffusion_model.blocks.0.self_attn.k.weight"

    def patched(model):
        clone = model.clone()
        clone.add_patches({key: (torch.full_like(clone.model.state_dict()[key], 0.02),)}, strength_patch=1.0)
        return clone

    expected = sample(patched(wan256()))
    model = distributed(wan256(), "cpu,cpu")
    plain_result = sample(model)
    torch.testing.assert_close(sample(patched(model)), expected, **TOLERANCE)
    assert (plain_result - expected).abs().max() > 1e-3, "the patch changes the result"


def test_per_frame_timesteps_of_wan22_are_split_with_the_tokens(keep_groups):
    """Wan 2.2 TI2V gives one timestep per latent frame; each rank must take its tokens' rows."""
    plain = wan256().model.diffusion_model
    model = distributed(wan256(), "cpu,cpu,cpu")
    runner = runner_of(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 8, 8, generator=generator)
    timestep = torch.tensor([[900.0, 500.0, 100.0], [800.0, 400.0, 0.0]])
    context = torch.randn(2, 6, 4096, generator=generator)
    executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
        model.model.diffusion_model._forward, model.model.diffusion_model, [runner])
    with torch.inference_mode():
        expected = plain(x, timestep, context)
        got = executor.execute(x, timestep, context, None, None, {})
    torch.testing.assert_close(got, expected, **TOLERANCE)


def test_cancel_during_a_worker_call_is_comfys_interrupt_and_the_workers_go_on(keep_groups, reference):
    model = distributed(wan256(), "cpu,cpu")
    sample(model)
    runner = runner_of(model)
    pids = runner.pids
    diffusion = model.model.diffusion_model
    executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(diffusion._forward, diffusion, [runner])
    x, timestep, context = torch.randn(2, 16, 2, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 4, 4096)
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            executor.execute(x, timestep, context, None, None, {})
    finally:
        comfy.model_management.interrupt_current_processing(False)
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    assert runner.pids == pids, "the cancel stopped the call, not the workers"


def test_cancel_during_a_long_forward_stops_within_a_block_and_keeps_the_workers(keep_groups):
    """8 blocks of 1 s each: a forward longer than the group's old 5 s stop grace. Cancel after 1.5 s
    stops every rank at the same block, a block or so later; the same workers then sample the plain result."""
    model, plain = distributed(load_wan_layers(8), "cpu,cpu"), load_wan_layers(8)
    sample(model, steps=1)
    runner = runner_of(model)
    group, pids = runner.lease.get(), runner.pids
    diffusion = model.model.diffusion_model
    executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(diffusion._forward, diffusion, [runner])
    x, timestep, context = torch.randn(2, 16, 2, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 4, 4096)
    group.call(f"{FNS}:slow_blocks", 1.0)
    cancel = threading.Timer(1.5, comfy.model_management.interrupt_current_processing, (True,))
    cancel.start()
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            executor.execute(x, timestep, context, None, None, {})
    finally:
        cancel.join()
        comfy.model_management.interrupt_current_processing(False)
    entered = group.call(f"{FNS}:fast_blocks")
    assert runner.pids == pids, "the cancel ended the workers"
    assert len(set(entered)) == 1 and 1 <= entered[0] <= 5, f"blocks entered before stopping: {entered} of 8"
    torch.testing.assert_close(sample(model, steps=1), sample(plain, steps=1), **TOLERANCE)
    assert runner.pids == pids


def test_easycache_added_after_distributed_runs_around_the_workers(keep_groups):
    """ComfyUI's EasyCache node on a distributed MODEL: its DIFFUSION_MODEL wrapper (added after the
    runner's) skips the same steps as on the plain model, instead of being dropped."""
    def easycache(model):
        return node_output(EasyCacheNode, model, 0.5, 0.0, 1.0, False)

    expected = sample(easycache(wan256()), steps=8)
    model = distributed(wan256(), "cpu,cpu")
    torch.testing.assert_close(sample(easycache(model), steps=8), expected, **TOLERANCE)
    assert (sample(model, steps=8) - expected).abs().max() > 0.1, "EasyCache skips steps here"


@pytest.mark.parametrize("patch,named", [
    (lambda m: node_output(SkipLayerGuidanceDiT, m, 3.0, 0.0, 1.0, double_layers="1"),
     r"patches_replace\['dit'\]\[\('double_block', 1\)\] \(comfy_extras\.nodes_slg\."),
    (lambda m: node_output(TomePatchModel, m, 0.5),
     r"patches\['attn1_patch'\] \(comfy_extras\.nodes_tomesd\..*patches\['attn1_output_patch'\]"),
], ids=["SkipLayerGuidanceDiT", "TomePatchModel"])
def test_model_patches_on_distributed_are_refused_by_name(keep_groups, reference, patch, named):
    """ComfyUI's patch nodes give the workers Python functions they cannot run: refused, naming each."""
    model = distributed(wan256(), "cpu,cpu")
    with pytest.raises(InputError, match=named):
        sample(patch(model))
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)


def test_skip_layer_guidance_changes_the_plain_result(reference):
    """So computing the distributed MODEL without the patch (as before) would have been a wrong result."""
    model = node_output(SkipLayerGuidanceDiT, wan256(), 3.0, 0.0, 1.0, double_layers="1")
    assert (sample(model) - reference).abs().max() > 1e-3


def test_workers_start_with_the_servers_comfy_flags():
    """A server started with --use-split-cross-attention --dont-upcast-attention --reserve-vram 1.5
    --fast fp16_accumulation --lowvram --deterministic: its workers have the same flags and ComfyUI
    there chose the split attention this process (started without the flag) did not."""
    changed = {"use_split_cross_attention": True, "dont_upcast_attention": True, "reserve_vram": 1.5,
               "fast": {comfy.cli_args.PerformanceFeature.Fp16Accumulation}, "lowvram": True, "deterministic": True}
    args = comfy.cli_args.args
    saved = {name: getattr(args, name) for name in changed}
    try:
        for name, value in changed.items():
            setattr(args, name, value)
        expected, config = comfy_flags(), group_config(["cpu", "cpu"], str(comfyui_dir()))
    finally:
        for name, value in saved.items():
            setattr(args, name, value)
    assert expected["fast"] == ["fp16_accumulation"] and expected["reserve_vram"] == 1.5 and expected["lowvram"]
    with WorkerGroup(config) as group:
        seen = group.call(f"{FNS}:comfy_settings")
    assert [view["flags"] for view in seen] == [expected] * 2
    assert {view["attention"] for view in seen} == {"attention_split"} != {optimized_attention.__name__}
    assert {view["reserved"] for view in seen} == {int(1.5 * 1024 ** 3)}


def test_high_and_low_noise_pair_share_the_workers(keep_groups):
    """Wan 2.2 14B's two experts as two loaders in one graph: alternately sampled, both right."""
    high_plain, low_plain = wan256(), load_wan_layers(2, seed=7)
    high, low = distributed(wan256(), "cpu,cpu"), distributed(load_wan_layers(2, seed=7), "cpu,cpu")
    for _ in range(2):
        torch.testing.assert_close(sample(high), sample(high_plain), **TOLERANCE)
        torch.testing.assert_close(sample(low), sample(low_plain), **TOLERANCE)
    assert runner_of(high).pids == runner_of(low).pids


def test_four_workers_split_cfg_or_sequence_per_call(reference):
    """cond + uncond: two CFG groups of two sequence ranks; cfg 1 (one row per call): all four ranks
    on the sequence. Either way the ranks' token counts add up to the batch's tokens, once each."""
    model = distributed(wan256(), "cpu,cpu,cpu,cpu")
    runner = runner_of(model)
    assert runner.cfg_degree == 2
    torch.testing.assert_close(sample(model), reference, **TOLERANCE)
    assert runner.last_tokens == [TOKENS // 2] * 4, "each rank: half of one row's tokens"
    torch.testing.assert_close(sample(model, cfg=1.0), sample(wan256(), cfg=1.0), **TOLERANCE)
    assert runner.last_tokens == [TOKENS // 4] * 4, "cfg 1: a quarter of the one row's tokens each, none twice"
    pids = runner.pids
    assert len(pids) == 4
    del model, runner
    gc.collect()
    assert not set(pids) & set(POOL.pids("wan_distributed")), "workers outlived the last MODEL using them"


def test_unloading_the_model_closes_its_workers(keep_groups):
    runner_of(keep_groups["cpu,cpu"]).close()  # this MODEL becomes the only user of its workers
    model = distributed(load_wan_layers(2), "cpu,cpu")
    sample(model)
    pids = runner_of(model).pids
    assert pids and set(pids) <= set(POOL.pids("wan_distributed"))
    comfy.model_management.unload_all_models()
    assert not set(pids) & set(POOL.pids("wan_distributed"))
    torch.testing.assert_close(sample(model), sample(load_wan_layers(2)), **TOLERANCE)
    runner_of(model).close()
