"""The pool of kept worker groups: shared weights copied once per identity, users counted, features
closed apart, and "free memory" ending only the groups not running a call (real gloo workers)."""
import threading

import psutil
import torch

from comfyui_parallel.parallel.pool import WorkerPool
from worker_groups import FNS, make_config


def state():
    return {"w": torch.arange(6.0).reshape(2, 3)}


def test_weights_are_copied_once_per_identity_and_freed_with_their_owner():
    pool = WorkerPool()
    pool.group(("f", 1), make_config(2))
    copies = []

    def make():
        copies.append(1)
        return state()

    first = pool.shared(("f", 1), "a", "v1", make)
    assert pool.shared(("f", 1), "a", "v1", make) is first and len(copies) == 1
    assert torch.equal(first.open()["w"], state()["w"])
    second = pool.shared(("f", 1), "a", "v2", make)
    assert second is not first and len(copies) == 2 and pool.weights_of(("f", 1), "a") is second
    pool.drop_weights(("f", 1), "a")
    assert pool.weights_of(("f", 1), "a") is None
    pool.close_all()


def test_the_last_user_closes_the_group_and_features_close_apart():
    pool = WorkerPool()
    group = pool.acquire(("wan", "cpu,cpu"), make_config(2))
    assert pool.acquire(("wan", "cpu,cpu"), make_config(2)) is group
    pool.group(("svd", "cpu,cpu"), make_config(2))
    pool.release(("wan", "cpu,cpu"))
    assert ("wan", "cpu,cpu") in pool
    pool.release(("wan", "cpu,cpu"))
    assert ("wan", "cpu,cpu") not in pool and pool.keys("svd") == [("svd", "cpu,cpu")]
    pool.close_feature("svd")
    assert pool.keys("svd") == []


def test_free_memory_ends_idle_groups_and_spares_a_running_call():
    pool = WorkerPool()
    idle = pool.group(("idle",), make_config(2)).start()
    running = pool.group(("running",), make_config(2)).start()
    idle_pids = idle.pids
    started = threading.Event()
    result = []

    def progress(rank, done, total):
        started.set()

    call = threading.Thread(target=lambda: result.append(
        running.call(f"{FNS}:steps_until_cancelled", 40, False, on_progress=progress)))
    call.start()
    assert started.wait(60)
    assert pool.close_idle() == [("idle",)]
    call.join(60)
    assert result and result[0] == [40, 40], "the running call finished"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in idle_pids)
    assert set(pool.pids("running")) == set(running.pids)
    pool.close_all()
    assert pool.pids() == []
