"""Worker groups shared by the launch, sequence and shared-weights tests of one pytest run.

Starting workers costs an interpreter plus a torch import each (seconds on a busy 2-core
machine), so each group size is started once per run and reused; a test that breaks a group
(crash, SIGKILL) leaves it to restart on its next call. Groups close when the run ends
(WorkerGroup's finalizer at interpreter exit).
"""
from comfyui_parallel.parallel.launch import WorkerGroup, WorkerGroupConfig

FNS = "tests.unit.parallel.launch_fns"
_GROUPS: dict[int, WorkerGroup] = {}


def make_config(size: int, **overrides) -> WorkerGroupConfig:
    """CPU workers with a short stop grace (tests make ranks wait in collectives on purpose)."""
    settings = {"devices": ["cpu"] * size, "stop_grace_s": 1.0, **overrides}
    return WorkerGroupConfig(**settings)


def running_group(size: int) -> WorkerGroup:
    """The shared group of `size` gloo workers, started (or restarted) if needed."""
    group = _GROUPS.get(size)
    if group is None:
        group = _GROUPS[size] = WorkerGroup(make_config(size))
    return group.start()

