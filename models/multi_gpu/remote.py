"""Workers on other machines for the distributed mode: the same join command as the batch generator's.

The Wan distributed group can take `remote_workers` ranks beyond its local gpu_ids: the server
listens on master_addr / master_port (and the next port for commands) and prints, once per remote
rank, the torchrun-style command to run there (parallel/launch.py `join_command`: no key in it,
a mode-0600 key file to copy, or COMFYUI_PARALLEL_AUTHKEY set on both sides). Every machine has
the same pack and the same model file at the same path: shared memory is per machine, so a remote
rank loads the model itself with ComfyUI's own loader and dtype (`file_weights`), then takes its
shard (fsdp) or keeps the replica. A MODEL whose weights differ from its file (a LoRA patched in)
cannot reach a remote rank: that is an InputError, not a silent mismatch.
"""
import logging
import os
from dataclasses import dataclass

from ...utils.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteWorkers:
    """Ranks that join from other machines, where they find the server, and the model file they load."""

    ranks: int
    master_addr: str
    master_port: int
    model_file: str | None

    def group_options(self) -> dict:
        """WorkerGroupConfig fields: the remote ranks and the rendezvous (a fixed key from the environment)."""
        options = {"remote_ranks": self.ranks, "master_addr": self.master_addr, "master_port": self.master_port}
        if os.environ.get("COMFYUI_PARALLEL_AUTHKEY"):
            options["authkey"] = os.environ["COMFYUI_PARALLEL_AUTHKEY"]  # remote workers may start first
        return options


def check_remote(ranks: int, master_addr: str, master_port: int, mode: str, model_file: str | None):
    """RemoteWorkers for the node's inputs (None without remote workers); InputError for what cannot run."""
    if not ranks:
        return None
    if ranks < 0:
        raise InputError("remote_workers", f"{ranks} is negative", "0 or more")
    if mode != "distributed":
        raise InputError("remote_workers", f"{ranks} remote workers with parallelism_type '{mode}'",
                         "0 unless parallelism_type is distributed")
    if model_file is None:
        raise InputError("remote_workers", "remote workers load the model file themselves; this MODEL did not "
                         "come from a file the node knows", "MultiGPULoader (it names the file), or 0")
    if not 1024 <= master_port <= 65534:
        raise InputError("master_port", f"{master_port} is not a usable port", "1024..65534")
    return RemoteWorkers(ranks, master_addr, master_port, model_file)


def refuse_patched(remote: RemoteWorkers | None, patched: bool) -> None:
    """A remote rank loads the file: weights patched in this server (LoRA) would not reach it."""
    if remote is not None and patched:
        raise InputError("remote_workers", "this MODEL has weight patches (a LoRA) that workers on other "
                         "machines cannot load from the model file", "0 remote workers, or no LoRA on this MODEL")


def print_join_commands(group, remote: RemoteWorkers, comfyui_dir: str) -> None:
    """The command each remote rank runs on its machine (printed once per started group)."""
    for rank in range(group.world_size - remote.ranks, group.world_size):
        command = group.join_command(rank, comfyui_dir=comfyui_dir)
        log.warning("[MultiGPU distributed] start remote worker %d on its machine (same pack, model file at %s) "
                    "with:\n  %s", rank, remote.model_file, command)


def file_weights(spec: dict) -> dict:
    """Worker side: the diffusion model's weights from the model file, loaded as the server loaded it."""
    from ..comfy.loaders import diffusion_state_dict

    return diffusion_state_dict(spec["model_file"], spec["unet_config"].get("dtype"))
