"""data_parallel mode: a diffusion-model wrapper that splits each call's batch over replicas (threads).

A wrapper registered under WrappersMP.DIFFUSION_MODEL receives ComfyUI's executor for the
diffusion model's forward (`executor.class_obj` is the model). The runner hands the call to
`parallel.replicate.DataParallel`, which splits the batch (the cond / uncond pair of CFG, or
several latents) over replicas; each replica continues the remaining wrappers of the chain
and its own inner forward (models/comfy/extension.py), so wrappers of other packs registered
after this one still run, once per chunk. The replicas take new weights when the patches
ComfyUI loaded into the model changed (a LoRA added, re-weighted or removed).
"""
import weakref

from ...parallel.replicate import DataParallel
from ..comfy.extension import continue_chain
from ..comfy.patcher import weights_identity


class DataParallelRunner:
    """DIFFUSION_MODEL wrapper: every call's batch split over replicas of the model, one per device."""

    def __init__(self, devices, base_model):
        self.devices = list(devices)
        self.base_model = weakref.ref(base_model)  # the BaseModel every clone of the patcher shares
        self.parallel: DataParallel | None = None

    def __call__(self, executor, *args, **kwargs):
        module = executor.class_obj
        if self.parallel is None or self.parallel.module is not module:
            self.close()
            self.parallel = DataParallel(module, self.devices, identity=self._identity)
        return self.parallel.call(lambda replica, *a, **k: continue_chain(executor, replica)(*a, **k),
                                  *args, **kwargs)

    def _identity(self) -> tuple | None:
        base = self.base_model()
        return weights_identity(base) if base is not None else None

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
