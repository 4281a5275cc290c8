"""The command channel's handshake and decoding: real sockets, real worker processes.

A peer holding the authkey still cannot run code in the server (a message naming any class or
function outside the data types messages carry is refused and nothing runs); a hello with a rank
outside the group is refused; a client that connects and stays silent does not stall the start.
"""
import io
import pickle
import socket
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

import pytest
import torch

from comfyui_parallel.parallel.launch import WorkerGroup
from comfyui_parallel.parallel.shared_weights import share_state_dict
from comfyui_parallel.parallel.worker_runtime import decode, encode
from worker_groups import FNS, make_config

AUTHKEY = "ab" * 32


class Forged:
    """Unpickling this (with plain pickle) would call os.system: what an attacker would send."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/comfyui_parallel_forged",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_messages_round_trip_with_the_data_types_they_carry():
    weights = share_state_dict({"w": torch.ones(2, 2)})
    try:
        message = {"op": "call", "args": (torch.arange(4.0), torch.float16, torch.device("cpu"), torch.Size([2])),
                   "kwargs": {"spec": {"dtype": torch.bfloat16, "ids": {1, 2}, "s": slice(1, 2)}, "w": weights}}
        back = decode(encode(message))
        assert torch.equal(back["args"][0], torch.arange(4.0)) and back["args"][1:] == message["args"][1:]
        assert back["kwargs"]["spec"] == message["kwargs"]["spec"]
        assert torch.equal(back["kwargs"]["w"].open()["w"], torch.ones(2, 2))
    finally:
        weights.release()


@pytest.mark.parametrize("payload", [Forged(), {"op": "call", "args": [Forged()]}, Path("/etc/passwd")])
def test_a_message_naming_other_classes_is_refused_and_nothing_runs(payload):
    marker = Path("/tmp/comfyui_parallel_forged")
    marker.unlink(missing_ok=True)
    buffer = io.BytesIO()
    pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    with pytest.raises(pickle.UnpicklingError, match="message refused"):
        decode(buffer.getvalue())
    assert not marker.exists()


def keep_connecting(port: int, hold: list, stop: threading.Event, hello=None) -> None:
    """Connect to the control port as soon as it listens; say `hello` (authenticated) or stay silent."""
    while not stop.is_set():
        try:
            if hello is None:
                hold.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            else:
                conn = Client(("127.0.0.1", port), authkey=bytes.fromhex(AUTHKEY))
                conn.send_bytes(pickle.dumps(hello))
                hold.append(conn)
            return
        except OSError:
            time.sleep(0.05)


@pytest.mark.parametrize("intruder", ["silent", "rank out of range", "forged hello"])
def test_a_bad_client_neither_joins_nor_stalls_the_start(intruder):
    port = free_port()
    hello = {"silent": None, "rank out of range": {"op": "hello", "rank": 99, "pid": 1},
             "forged hello": {"op": "hello", "rank": Forged()}}[intruder]
    held, stop = [], threading.Event()
    thread = threading.Thread(target=keep_connecting, args=(port, held, stop, hello), daemon=True)
    thread.start()
    group = WorkerGroup(make_config(2, control_port=port, authkey=AUTHKEY, start_timeout_s=60))
    try:
        started = time.monotonic()
        group.start()
        assert time.monotonic() - started < 45, "the start waited on the intruder"
        assert held, "the intruder connected during the start"
        assert [r["rank"] for r in group.call(f"{FNS}:identity")] == [0, 1]
    finally:
        stop.set()
        group.close()
        for conn in held:
            conn.close()
