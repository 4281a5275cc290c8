"""Which wrapper and callbacks each Multi-GPU mode attaches to its patcher, in one table.

none and block_distribution need no wrapper (the patcher places the blocks); data_parallel
and distributed run every diffusion-model call through a runner; load_device=offload_device
adds a cleanup callback that sends the weights back after each sampling run.
"""
from ..comfy.extension import CALLBACKS, WRAPPERS
from .data_parallel import DataParallelRunner
from .distributed_server import distributed_runner

WRAPPER_KEY = "comfyui_parallel.multi_gpu"

RUNNERS = {
    "data_parallel": lambda patcher: DataParallelRunner(patcher.multi_gpu.devices, patcher.model),
    "distributed": distributed_runner,
}


def offload_after_run(patcher) -> None:
    """ON_CLEANUP callback for load_device=offload_device: weights back to the offload device after sampling."""
    patcher.detach(unpatch_all=True)


def attach_runners(patcher) -> None:
    """Register the wrapper and callbacks the patcher's settings need (replacing earlier ones)."""
    settings = patcher.multi_gpu
    patcher.remove_wrappers_with_key(WRAPPERS.DIFFUSION_MODEL, WRAPPER_KEY)
    for call_type in (CALLBACKS.ON_DETACH, CALLBACKS.ON_CLEANUP):
        patcher.remove_callbacks_with_key(call_type, WRAPPER_KEY)
    make_runner = RUNNERS.get(settings.parallelism_type)
    if make_runner is not None:
        runner = make_runner(patcher)
        patcher.add_wrapper_with_key(WRAPPERS.DIFFUSION_MODEL, WRAPPER_KEY, runner)
        patcher.add_callback_with_key(CALLBACKS.ON_DETACH, WRAPPER_KEY, runner.on_detach)
    if settings.offload_after_run:
        patcher.add_callback_with_key(CALLBACKS.ON_CLEANUP, WRAPPER_KEY, offload_after_run)


def runner_of(patcher):
    """The Multi-GPU wrapper object registered on a patcher (None for none / block_distribution)."""
    wrappers = patcher.get_wrappers(WRAPPERS.DIFFUSION_MODEL, WRAPPER_KEY)
    return wrappers[0] if wrappers else None
