"""The worker group on gloo with 2 and 3 real worker processes: parity, crash, cancel, SIGKILL, cleanup."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from comfyui_parallel.parallel.launch import WorkerGroup, WorkerGroupConfig
from comfyui_parallel.utils.errors import Cancelled, InputError, WorkerError
from worker_groups import FNS, make_config, running_group

PACK = Path(__file__).resolve().parents[3]


@pytest.fixture(params=[2, 3], ids=["2ranks", "3ranks"])
def group(request):
    return running_group(request.param)


def assert_gone(pids):
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def test_collective_matches_single_process(group):
    full = torch.randint(-50, 50, (11, 5)).float()  # integer values: sums are exact in any order
    results = group.call(f"{FNS}:all_reduce_rows", full)
    assert len(results) == group.world_size
    for result in results:
        assert torch.equal(result, full.sum(dim=0))


def test_results_in_rank_order_with_per_rank_args(group):
    names = [f"part-{rank}" for rank in range(group.world_size)]
    results = group.call(f"{FNS}:identity", per_rank=names, value=7)
    assert [r["rank"] for r in results] == list(range(group.world_size))
    assert [r["rank_arg"] for r in results] == names
    assert {r["world"] for r in results} == {group.world_size}
    assert [r["pid"] for r in results] == group.pids
    assert all(r["value"] == 7 for r in results)


def test_state_is_kept_between_calls(group):
    first = group.call(f"{FNS}:count_state")
    second = group.call(f"{FNS}:count_state")
    assert [b - a for a, b in zip(first, second)] == [1] * group.world_size


def test_worker_imports_pack_by_alias_without_comfyui_main(group):
    report = group.call(f"{FNS}:module_report")[0]
    assert report["alias"] and report["generic"] == []
    assert Path(report["main_file"]).name == "worker_main.py"
    assert report["threads"] == 1


def test_crash_returns_traceback_and_group_recovers(group):
    """2 ranks: the peer waits in a barrier (the group is restarted); 3 ranks: it does not (kept)."""
    bad, blocking, pids = group.world_size - 1, group.world_size == 2, group.pids
    with pytest.raises(WorkerError) as err:
        group.call(f"{FNS}:crash", bad, blocking)
    assert err.value.rank == bad
    assert group.alive() != blocking and (group.pids == pids) != blocking
    assert "ZeroDivisionError: rank" in str(err.value)
    assert "launch_fns.py" in err.value.traceback_text and "in crash" in err.value.traceback_text
    full = torch.ones(4, 3)
    assert all(torch.equal(r, full.sum(0)) for r in group.call(f"{FNS}:all_reduce_rows", full))
    assert group.alive()


@pytest.mark.parametrize("sync", [True, False], ids=["lockstep", "independent"])
def test_cancel_stops_every_worker(group, sync):
    progress = []
    with pytest.raises(Cancelled):
        group.call(f"{FNS}:steps_until_cancelled", 10_000, sync,
                   on_progress=lambda rank, done, total: progress.append((rank, done, total)),
                   should_cancel=lambda: len(progress) >= 3)
    assert progress[0][2] == 10_000
    assert max(done for _, done, _ in progress) < 10_000
    pids = group.pids
    assert group.call(f"{FNS}:identity")[0]["world"] == group.world_size
    if sync:
        assert group.pids == pids  # lock-step cancel keeps the group


def test_cancel_method_from_callback(group):
    with pytest.raises(Cancelled):
        group.call(f"{FNS}:steps_until_cancelled", 10_000, True, on_progress=lambda *a: group.cancel())


class Interrupt(Exception):
    """Stands in for ComfyUI 0.3.x's InterruptProcessingException raised from a progress callback."""


class Interrupt038(BaseException):
    """ComfyUI 0.38's InterruptProcessingException is a BaseException (comfy/model_management.py @02b2b388)."""


@pytest.mark.parametrize("interrupt_type", [Interrupt, Interrupt038])
def test_exception_in_a_callback_stops_the_workers_and_keeps_the_group(group, interrupt_type):
    pids = group.pids

    def interrupt(rank, done, total):
        raise interrupt_type()

    with pytest.raises(interrupt_type):
        group.call(f"{FNS}:steps_until_cancelled", 10_000, True, on_progress=interrupt)
    assert group.alive() and group.pids == pids
    assert group.call(f"{FNS}:count_state")


def test_tasks_are_handed_out_once_each(group):
    events = []
    results = group.call(f"{FNS}:drain_tasks", tasks=range(20), on_event=lambda rank, obj: events.append(obj))
    taken = sorted(item for per_rank in results for item in per_rank)
    assert taken == list(range(20))
    assert sorted((e["item"], e["square"]) for e in events) == [(i, i * i) for i in range(20)]


def test_unknown_function_is_a_worker_error(group):
    with pytest.raises(WorkerError, match="ModuleNotFoundError"):
        group.call("parallel.no_such_module:run")


def test_bad_arguments_name_the_input(group):
    with pytest.raises(InputError, match="^fn: "):
        group.call("no_colon")
    with pytest.raises(InputError, match="^per_rank: has 1 items"):
        group.call(f"{FNS}:identity", per_rank=["only one"])
    with pytest.raises(InputError, match="^devices: "):
        WorkerGroupConfig(devices=[])
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="^devices: 'cuda:0' does not exist"):
            WorkerGroupConfig(devices=["cuda:0"])
    with pytest.raises(InputError, match="^master_port: "):
        WorkerGroupConfig(devices=["cpu"], remote_ranks=1)


def test_sigkill_is_a_clear_error_not_a_hang(group):
    pids = group.pids
    victim = pids[-1]

    def kill_once(rank, obj):
        if rank == group.world_size - 1 and psutil.pid_exists(victim):
            os.kill(victim, signal.SIGKILL)

    with pytest.raises(WorkerError) as err:
        group.call(f"{FNS}:sleep_forever", on_event=kill_once)
    assert err.value.rank == group.world_size - 1
    assert "SIGKILL" in str(err.value) and str(victim) in str(err.value)
    assert not group.alive()
    assert_gone(pids)
    results = group.call(f"{FNS}:identity")  # the next call starts a fresh group
    assert set(r["pid"] for r in results).isdisjoint(pids)


def test_hung_worker_is_found_by_missing_heartbeats():
    group = running_group(2)
    victim, timeout = group.pids[1], group.config.heartbeat_timeout_s
    stopped = []

    def stop_once(rank, obj):
        if rank == 1 and not stopped:
            os.kill(victim, signal.SIGSTOP)  # alive but silent, like a frozen machine
            stopped.append(victim)

    group.config.heartbeat_timeout_s = 3.0
    try:
        with pytest.raises(WorkerError, match="no heartbeat") as err:
            group.call(f"{FNS}:sleep_forever", on_event=stop_once)
    finally:
        group.config.heartbeat_timeout_s = timeout
    assert err.value.rank == 1
    assert_gone([victim])


def test_start_failure_returns_the_worker_traceback():
    group = WorkerGroup(make_config(1, env={"COMFYUI_PARALLEL_THREADS": "many"}))
    with pytest.raises(WorkerError, match="failed to start: ValueError") as err:
        group.start()
    assert err.value.rank == 0 and "from_environ" in err.value.traceback_text
    assert not group.alive()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_rank_joins_with_documented_command_and_close_ends_every_child():
    setting = {"COMFYUI_PARALLEL_TEST_SETTING": '{"lowvram": true}'}  # e.g. the server's ComfyUI flags
    config = make_config(1, remote_ranks=1, master_port=free_port(), control_port=free_port(), start_timeout_s=60,
                         env=setting)
    group = WorkerGroup(config)
    command = group.join_command(1, device="cpu", comfyui_dir=str(PACK / ".comfyui"), python=sys.executable)
    assert "MASTER_ADDR=127.0.0.1" in command and "RANK=1" in command and "WORLD_SIZE=2" in command
    assert group._authkey.hex() not in command, "the key is printed, and ComfyUI's log is served over HTTP"
    assert group.key_file().stat().st_mode & 0o777 == 0o600
    remote = subprocess.Popen(command, shell=True)  # stands in for a second machine
    try:
        with group:
            full = torch.randint(-9, 9, (6, 4)).float()
            results = group.call(f"{FNS}:all_reduce_rows", full)
            assert all(torch.equal(r, full.sum(0)) for r in results)
            assert [r["rank"] for r in group.call(f"{FNS}:identity")] == [0, 1]
            name = next(iter(setting))
            assert group.call(f"{FNS}:environment", name) == [setting[name]] * 2, "the group's env on every rank"
            listening = {c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            assert {(ip, port) for ip, port in listening if port == config.master_port} == \
                {("127.0.0.1", config.master_port)}, "the rendezvous listens on master_addr only"
            local_pids = group.pids
        assert_gone(local_pids)
        assert not group.alive()
        assert remote.wait(timeout=60) == 0
        with pytest.raises(RuntimeError, match="closed"):
            group.call(f"{FNS}:identity")
    finally:
        if remote.poll() is None:
            remote.kill()
