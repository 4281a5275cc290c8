"""One owner for the kept worker groups and the weights shared with them.

Starting a worker group costs seconds and copying a model into shared memory costs its size,
so the Wan distributed mode, the SVD step pipeline and the SDXL batch generator keep both
between prompts. The pool holds every such group under a key, with the weights shared with
it (by owner, each with the identity of what it holds) and the model token its workers have
loaded. `close_idle()` ends every group not running a call and frees its shared copies (the
pack calls it on ComfyUI's POST /free), `close_all()` runs at exit, and a group whose last
user lets go closes at once.

    group = POOL.group(key, config)                       # started lazily, kept
    weights = POOL.shared(key, owner, identity, lambda: model.state_dict())
"""
import atexit
import threading
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import torch

from .launch import WorkerGroup, WorkerGroupConfig
from .shared_weights import SharedWeights, share_state_dict

__all__ = ["WorkerPool", "POOL"]


@dataclass
class _Entry:
    group: WorkerGroup
    users: int = 0
    weights: dict = field(default_factory=dict)  # owner -> (identity, SharedWeights)
    loaded: tuple | None = None  # (token, worker pids) of the model the workers hold


class WorkerPool:
    """Worker groups by key, their shared weights, and what their workers hold."""

    def __init__(self):
        self._lock = threading.RLock()
        self._entries: dict[Hashable, _Entry] = {}

    def group(self, key: Hashable, config: WorkerGroupConfig) -> WorkerGroup:
        """The group kept under `key`, created when there is none (a kept group restarts dead workers
        at its next `start`)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(WorkerGroup(config))
            return entry.group

    def acquire(self, key: Hashable, config: WorkerGroupConfig) -> WorkerGroup:
        """`group(key, config)`, counted as one more user until `release(key)`."""
        with self._lock:
            group = self.group(key, config)
            self._entries[key].users += 1
            return group

    def release(self, key: Hashable) -> None:
        """One user fewer; the group closes when it was the last."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.users -= 1
            if entry.users <= 0:
                self.close(key)

    def shared(self, key: Hashable, owner: Hashable, identity: Hashable,
               state_dict: Callable[[], Mapping[str, torch.Tensor]]) -> SharedWeights:
        """`owner`'s weights for the group `key` in shared memory, copied again only when `identity` changed."""
        with self._lock:
            entry = self._entries[key]
            held = entry.weights.get(owner)
            if held is not None and held[0] == identity:
                return held[1]
            self.drop_weights(key, owner)
            weights = share_state_dict(state_dict())
            entry.weights[owner] = (identity, weights)
            return weights

    def weights_of(self, key: Hashable, owner: Hashable) -> SharedWeights | None:
        """`owner`'s shared copy for the group `key`, None when it has none."""
        with self._lock:
            entry = self._entries.get(key)
            held = entry.weights.get(owner) if entry is not None else None
            return held[1] if held is not None else None

    def drop_weights(self, key: Hashable, owner: Hashable) -> None:
        """Free `owner`'s shared copy for the group `key` (if any)."""
        with self._lock:
            entry = self._entries.get(key)
            held = entry.weights.pop(owner, None) if entry is not None else None
        if held is not None:
            held[1].release()

    def holds(self, key: Hashable, token: str) -> bool:
        """Whether the workers of `key` (these very processes) hold the model `token`."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.loaded == (token, tuple(entry.group.pids))

    def mark_loaded(self, key: Hashable, token: str) -> None:
        with self._lock:
            entry = self._entries[key]
            entry.loaded = (token, tuple(entry.group.pids))

    def close(self, key: Hashable) -> None:
        """End the group `key` and free its shared weights."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return
        for _identity, weights in entry.weights.values():
            weights.release()
        entry.group.close()

    def keys(self, feature: str) -> list[tuple]:
        """The keys of one feature's groups (keys are tuples starting with the feature's name)."""
        with self._lock:
            return [k for k in self._entries if isinstance(k, tuple) and k[:1] == (feature,)]

    def close_feature(self, feature: str) -> None:
        """End every group of one feature."""
        for key in self.keys(feature):
            self.close(key)

    def close_idle(self) -> list[Hashable]:
        """End every group not running a call now (ComfyUI's "free memory"); returns their keys."""
        with self._lock:
            idle = [key for key, entry in self._entries.items() if not entry.group.busy()]
        for key in idle:
            self.close(key)
        return idle

    def close_all(self) -> None:
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            self.close(key)

    def pids(self, feature: str | None = None) -> list[int]:
        """Process ids of every kept worker, or of one feature's (for tests and status)."""
        with self._lock:
            keys = self.keys(feature) if feature is not None else list(self._entries)
            return [pid for key in keys for pid in self._entries[key].group.pids]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


POOL = WorkerPool()
atexit.register(POOL.close_all)
