"""Diffusion-model wrappers that run a Multi-GPU MODEL's calls: data parallel (threads) here.

A wrapper registered under WrappersMP.DIFFUSION_MODEL receives ComfyUI's executor for the
diffusion model's forward (`executor.class_obj` is the model, `executor.original` its inner
forward). The data-parallel runner hands the call to `parallel.replicate.DataParallel`,
which splits the batch (the cond / uncond pair of CFG, or several latents) over replicas;
each replica continues the remaining wrappers of the chain and its own inner forward, so
wrappers of other packs registered after this one still run, once per chunk.
"""
import comfy.patcher_extension
from comfy.patcher_extension import CallbacksMP, WrappersMP

from ..parallel.replicate import DataParallel

WRAPPER_KEY = "comfyui_parallel.multi_gpu"


def continue_chain(executor, replica):
    """A function running the rest of `executor`'s wrapper chain, then the inner forward, on `replica`."""
    remaining = executor.wrappers[executor.idx + 1:]
    method = executor.original.__name__

    def run(*args, **kwargs):
        original = getattr(replica, method)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(original, replica, remaining).execute(
            *args, **kwargs)

    return run


def weights_identity(module) -> tuple:
    """data_ptr of every weight: changes when ComfyUI's LoRA patching replaces a tensor."""
    return tuple(t.data_ptr() for t in list(module.parameters()) + list(module.buffers()))


class DataParallelRunner:
    """DIFFUSION_MODEL wrapper: every call's batch split over replicas of the model, one per device."""

    def __init__(self, devices):
        self.devices = list(devices)
        self.parallel: DataParallel | None = None

    def __call__(self, executor, *args, **kwargs):
        module = executor.class_obj
        if self.parallel is None or self.parallel.module is not module:
            self.close()
            self.parallel = DataParallel(module, self.devices)
        return self.parallel.call(lambda replica, *a, **k: continue_chain(executor, replica)(*a, **k),
                                  *args, **kwargs)

    @property
    def ran_on(self) -> list:
        """(replica index, device, rows) of every chunk run so far (the engine's own record)."""
        return self.parallel.ran_on if self.parallel is not None else []

    def close(self) -> None:
        """Drop the replicas (frees their devices' memory)."""
        if self.parallel is not None:
            self.parallel.close()
            self.parallel = None

    def on_detach(self, _patcher, unpatch_all: bool) -> None:
        """ComfyUI unloaded the model: the replicas go with it."""
        if unpatch_all:
            self.close()


def offload_after_run(patcher) -> None:
    """ON_CLEANUP callback for load_device=offload_device: weights back to the offload device after sampling."""
    patcher.detach(unpatch_all=True)


def attach_runners(patcher) -> None:
    """Register the wrapper and callbacks the patcher's settings need (replacing earlier ones)."""
    settings = patcher.multi_gpu
    patcher.remove_wrappers_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    for call_type in (CallbacksMP.ON_DETACH, CallbacksMP.ON_CLEANUP):
        patcher.remove_callbacks_with_key(call_type, WRAPPER_KEY)
    if settings.parallelism_type == "data_parallel":
        runner = DataParallelRunner(settings.devices)
        patcher.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, runner)
        patcher.add_callback_with_key(CallbacksMP.ON_DETACH, WRAPPER_KEY, runner.on_detach)
    if settings.parallelism_type == "distributed":
        from .multi_gpu_distributed import attach_distributed

        attach_distributed(patcher)
    if settings.offload_after_run:
        patcher.add_callback_with_key(CallbacksMP.ON_CLEANUP, WRAPPER_KEY, offload_after_run)


def runner_of(patcher):
    """The Multi-GPU wrapper object registered on a patcher (None for none / block_distribution)."""
    wrappers = patcher.get_wrappers(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    return wrappers[0] if wrappers else None
