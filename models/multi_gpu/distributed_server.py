"""distributed mode, server side: a diffusion-model wrapper that runs each call in worker processes.

The MODEL's patcher keeps the blocks on the offload device (models/multi_gpu/patcher.py); the
wrapper shares the model's current (LoRA-patched) weights once through shared memory, has
every worker rebuild the model (models/multi_gpu/distributed_worker.py), and sends each
diffusion-model call's inputs there; the output comes back to ComfyUI's sampler in this process.

Worker groups live in the pack's pool (parallel/pool.py): one per (devices, ComfyUI folder),
shared by every MODEL that uses those devices, kept between prompts, and closed when no MODEL
uses it any more (ComfyUI unloaded the MODEL, or it was garbage-collected), on POST /free,
or when the server exits.
"""
import functools
import logging
import weakref

import torch

from ...parallel.devices import storage_device
from ...parallel.launch import WorkerGroup, WorkerGroupConfig
from ...parallel.pool import POOL
from ...parallel.shared_weights import move_into
from ...parallel.worker_runtime import to_cpu
from ...utils.errors import Cancelled
from ..comfy import management as host
from ..comfy.extension import rest_of_chain
from ..comfy.workers import group_config
from ..comfy.patcher import weights_identity
from ..wan.family import wan_spec
from .call_options import worker_options
from .layout import call_layout, combine, most_cfg_groups
from .remote import print_join_commands

WORKER_FN = "models.multi_gpu.distributed_worker"
STOP_GRACE_S = 30.0  # workers stop within a block or two of a Cancel; only a wedged group is ended
log = logging.getLogger(__name__)


class _Lease:
    """A runner's hold on a pooled worker group and its shared weights there; released once."""

    def __init__(self, key: tuple, config: WorkerGroupConfig):
        self.key, self.config = key, config
        self.group: WorkerGroup | None = None

    def get(self) -> WorkerGroup:
        if self.group is None or self.key not in POOL:
            self.group = POOL.acquire(self.key, self.config)
        return self.group

    @property
    def weights(self):
        """The shared copy of the model these workers were given (None before the first call)."""
        return POOL.weights_of(self.key, id(self))

    def release(self) -> None:
        if self.group is not None:
            self.group = None
            POOL.drop_weights(self.key, id(self))
            POOL.release(self.key)


class DistributedRunner:
    """DIFFUSION_MODEL wrapper: every call runs in the workers (Ulysses + CFG split)."""

    def __init__(self, devices, spec: dict, base_model, sharding: str = "replicate", remote=None):
        names = [str(storage_device(d)) if d.type == "cpu" else str(d) for d in devices]
        options = remote.group_options() if remote is not None else {}  # ranks on other machines
        config = group_config(names, str(host.comfyui_dir()), stop_grace_s=STOP_GRACE_S, **options)
        self.spec = {**spec, "local_ranks": len(names), "model_file": remote.model_file if remote else None}
        self.sharding, self.remote = sharding, remote
        self.base_model = weakref.ref(base_model)  # the BaseModel every clone of the patcher shares
        self.cfg_degree = most_cfg_groups(config.world_size)  # CFG groups of a call whose batch splits
        self.last_tokens: list[int] = []  # real tokens each rank computed in the last call
        self.lease = _Lease(("wan_distributed", tuple(names), config.comfyui_dir, *sorted(options.items())), config)
        self._finalizer = weakref.finalize(self, self.lease.release)

    def __call__(self, executor, *args, **kwargs):
        """The call in the workers; DIFFUSION_MODEL wrappers added after this one (EasyCache, ...) run
        here around it, as they run around the forward in a plain run."""
        return rest_of_chain(executor, functools.partial(self._in_workers, executor.class_obj))(*args, **kwargs)

    def _in_workers(self, module, x, timestep, context, clip_fea=None, time_dim_concat=None,
                    transformer_options={}, **kwargs):
        options = worker_options(transformer_options)  # refuses function patches by name
        group = self.lease.get()
        token = self._load(group, module)
        inputs = {"x": x, "timestep": timestep, "context": context, "clip_fea": clip_fea,
                  "time_dim_concat": time_dim_concat, "kwargs": kwargs,
                  "rope_options": options.get("rope_options")}
        results = self._call(group, "forward", token, to_cpu(inputs))
        self.last_tokens = [result["tokens"] for result in results]
        outputs = [result["out"] for result in results]
        return combine(outputs, call_layout(x.shape[0], len(results))).to(device=x.device)

    def _call(self, group: WorkerGroup, fn: str, *args) -> list:
        """group.call with ComfyUI's cancel button polled; a cancel becomes ComfyUI's interrupt."""
        try:
            return group.call(f"{WORKER_FN}:{fn}", *args, should_cancel=host.interrupted)
        except Cancelled as cancelled:
            raise host.INTERRUPT() from cancelled

    def _load(self, group: WorkerGroup, module: torch.nn.Module) -> str:
        """Share the model's current weights and load them in the workers, unless they already hold them.

        Several MODELs may share one group (Wan 2.2's high / low noise pair): the pool knows
        which model the workers hold, and a switch reloads from this runner's shared copy. What the
        workers hold is named by the patches ComfyUI loaded into the model (a LoRA added, re-weighted
        or removed is new weights), never by tensor addresses.
        """
        identity = weights_identity(self.base_model())
        token = f"{id(module):x}-{hash(identity) & 0xFFFFFFFF:x}-{self.sharding}"
        if self.remote is not None and not group.alive():
            print_join_commands(group, self.remote, group.config.comfyui_dir)
        group.start()
        if POOL.holds(self.lease.key, token):
            return token
        weights = POOL.shared(self.lease.key, id(self.lease), identity, module.state_dict)
        move_into(module, weights)  # ComfyUI's CPU weights become the shared copy: one copy on this machine
        self._call(group, "load_model", self.spec, weights, token, self.sharding)
        POOL.mark_loaded(self.lease.key, token)
        return token

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


def distributed_runner(patcher) -> DistributedRunner:
    """The runner for a Multi-GPU patcher whose mode is distributed."""
    runner = DistributedRunner(patcher.multi_gpu.devices, wan_spec(patcher).to_message(), patcher.model,
                               sharding=patcher.multi_gpu.weight_sharding, remote=patcher.multi_gpu.remote)
    world = runner.lease.config.world_size
    log.info("distributed: %d workers; a call with cond and uncond runs as %d CFG group(s) of %d sequence ranks, "
             "any other call on all of them", world, runner.cfg_degree, world // runner.cfg_degree)
    return runner
