"""distributed mode, server side: a diffusion-model wrapper that runs each call in worker processes.

The MODEL's patcher keeps the blocks on the offload device (models/multi_gpu_patcher); the
wrapper shares the model's current (LoRA-patched) weights once through shared memory, has
every worker rebuild the model (models/wan_worker), and sends each diffusion-model call's
inputs there; the output comes back to ComfyUI's sampler in this process.

Worker groups are long-lived: one per (devices, ComfyUI folder), shared by every MODEL that
uses those devices, kept between prompts, and closed when no MODEL uses it any more (the
MODEL was unloaded by ComfyUI or garbage-collected) or when the server exits.
"""
import atexit
import logging
import threading
import weakref
from pathlib import Path

import torch

import comfy.model_management
from comfy.patcher_extension import CallbacksMP, WrappersMP

from ..parallel.devices import storage_device
from ..parallel.launch import WorkerGroup, WorkerGroupConfig
from ..parallel.shared_weights import share_state_dict
from ..parallel.worker_runtime import to_cpu
from ..utils.errors import Cancelled
from .multi_gpu_runners import WRAPPER_KEY, weights_identity
from .wan import wan_spec

log = logging.getLogger(__name__)


class GroupRegistry:
    """Worker groups by configuration, reference-counted by the runners using them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._groups: dict[tuple, WorkerGroup] = {}
        self._users: dict[tuple, int] = {}
        self._loaded: dict[tuple, tuple] = {}  # key -> (model token, worker pids) the workers hold

    def acquire(self, key: tuple, config: WorkerGroupConfig) -> WorkerGroup:
        with self._lock:
            if key not in self._groups:
                self._groups[key] = WorkerGroup(config)
            self._users[key] = self._users.get(key, 0) + 1
            return self._groups[key]

    def release(self, key: tuple) -> None:
        with self._lock:
            self._users[key] = self._users.get(key, 1) - 1
            if self._users[key] > 0:
                return
            self._users.pop(key, None)
            self._loaded.pop(key, None)
            group = self._groups.pop(key, None)
        if group is not None:
            group.close()

    def close_all(self) -> None:
        with self._lock:
            groups = list(self._groups.values())
            self._groups.clear()
            self._users.clear()
            self._loaded.clear()
        for group in groups:
            group.close()

    def holds(self, key: tuple, token: str, pids: list[int]) -> bool:
        """Whether the workers of `key` (these very processes) hold the model `token`."""
        return self._loaded.get(key) == (token, tuple(pids))

    def mark_loaded(self, key: tuple, token: str, pids: list[int]) -> None:
        self._loaded[key] = (token, tuple(pids))

    def pids(self) -> list[int]:
        """Process ids of every running worker (for tests and status)."""
        with self._lock:
            return [pid for group in self._groups.values() for pid in group.pids]


REGISTRY = GroupRegistry()
atexit.register(REGISTRY.close_all)


def cfg_degree_for(world: int) -> int:
    """CFG groups for `world` ranks: the cond / uncond pair split over two halves from 4 ranks on."""
    return 2 if world >= 4 and world % 2 == 0 else 1


def comfyui_dir() -> str:
    return str(Path(comfy.model_management.__file__).resolve().parents[1])


class _Lease:
    """A runner's hold on a worker group and its shared weights; released once."""

    def __init__(self, key: tuple, config: WorkerGroupConfig):
        self.key, self.config = key, config
        self.group: WorkerGroup | None = None
        self.weights = None
        self.identity = None  # weights identity of the shared copy in `weights`

    def get(self) -> WorkerGroup:
        if self.group is None:
            self.group = REGISTRY.acquire(self.key, self.config)
        return self.group

    def release(self) -> None:
        if self.weights is not None:
            self.weights.release()
            self.weights = self.identity = None
        if self.group is not None:
            self.group, group = None, self.group
            REGISTRY.release(self.key)
            del group


class DistributedRunner:
    """DIFFUSION_MODEL wrapper: every call runs in the workers (Ulysses + CFG split)."""

    def __init__(self, devices, spec: dict):
        names = [str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices]
        config = WorkerGroupConfig(devices=names, comfyui_dir=comfyui_dir())
        self.spec = spec
        self.cfg_degree = cfg_degree_for(len(names))
        self.lease = _Lease((tuple(names), config.comfyui_dir), config)
        self._finalizer = weakref.finalize(self, self.lease.release)

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                 transformer_options={}, **kwargs):
        group = self.lease.get()
        token = self._load(group, executor.class_obj)
        inputs = {"x": x, "timestep": timestep, "context": context, "clip_fea": clip_fea,
                  "time_dim_concat": time_dim_concat, "kwargs": kwargs,
                  "rope_options": transformer_options.get("rope_options")}
        results = self._call(group, "forward", token, to_cpu(inputs))
        return self._combine(results, x.shape[0]).to(device=x.device)

    def _call(self, group: WorkerGroup, fn: str, *args) -> list:
        """group.call with ComfyUI's cancel button polled; a cancel becomes ComfyUI's interrupt."""
        try:
            return group.call(f"models.wan_worker:{fn}", *args,
                              should_cancel=comfy.model_management.processing_interrupted)
        except Cancelled as cancelled:
            raise comfy.model_management.InterruptProcessingException() from cancelled

    def _load(self, group: WorkerGroup, module: torch.nn.Module) -> str:
        """Share the model's current weights and load them in the workers, unless they already hold them.

        Several MODELs may share one group (Wan 2.2's high / low noise pair): the registry
        knows which model the workers hold, and a switch reloads from this runner's shared copy.
        """
        identity = weights_identity(module)
        token = f"{id(module):x}-{hash(identity) & 0xFFFFFFFF:x}"
        group.start()
        if REGISTRY.holds(self.lease.key, token, group.pids):
            return token
        if self.lease.identity != identity:
            if self.lease.weights is not None:
                self.lease.weights.release()
            self.lease.weights = share_state_dict(module.state_dict())
            self.lease.identity = identity
        self._call(group, "load_model", self.spec, self.lease.weights, token, self.cfg_degree)
        REGISTRY.mark_loaded(self.lease.key, token, group.pids)
        return token

    def _combine(self, results: list, batch: int) -> torch.Tensor:
        """The output rows from each sequence group's first rank, in batch order."""
        size = len(results) // self.cfg_degree
        if self.cfg_degree > 1 and batch % self.cfg_degree == 0:
            return torch.cat([results[g * size] for g in range(self.cfg_degree)], dim=0)
        return results[0]

    @property
    def pids(self) -> list[int]:
        return self.lease.group.pids if self.lease.group is not None else []

    def close(self) -> None:
        """Let go of the workers (closed when no other MODEL uses them) and the shared weights."""
        self.lease.release()

    def on_detach(self, _patcher, unpatch_all: bool) -> None:
        """ComfyUI unloaded the model: the workers and shared weights go with it."""
        if unpatch_all:
            self.close()


def attach_distributed(patcher) -> None:
    """Register the distributed runner on a Multi-GPU patcher whose mode is distributed."""
    runner = DistributedRunner(patcher.multi_gpu.devices, wan_spec(patcher).to_message())
    patcher.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, runner)
    patcher.add_callback_with_key(CallbacksMP.ON_DETACH, WRAPPER_KEY, runner.on_detach)
    log.info("distributed: %d workers, %d CFG group(s) of %d sequence ranks", len(runner.lease.config.devices),
             runner.cfg_degree, len(runner.lease.config.devices) // runner.cfg_degree)
