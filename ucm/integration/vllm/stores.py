"""The stores alive in this process, one per (engine, TP rank), built by the worker side.

When the scheduler shares the worker's process it finds the store here and looks up directly
(see ``lookup_rpc``), and the worker too (``ucm_layerwise_prefetch``); tests and the demo read the
stores' stats from here.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_stores: dict[str, list] = {}  # key -> [store, refcount]


def acquire(key: str, factory: Callable[[], Any]) -> Any:
    with _lock:
        entry = _stores.get(key)
        if entry is None:
            entry = _stores[key] = [factory(), 0]
        entry[1] += 1
        return entry[0]


def release(key: str) -> None:
    with _lock:
        entry = _stores.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _stores[key]
            close = getattr(entry[0], "close", None)
            if close is not None:
                close()


def get(key: str) -> Any:
    with _lock:
        entry = _stores.get(key)
        return entry[0] if entry is not None else None


# key -> the worker side of that (engine, rank) in this process, weakly: an engine dropped without
# shutdown must not keep its worker (and KV cache) alive here
_workers: dict[str, "weakref.ref[Any]"] = {}


def register_worker(key: str, worker: Any) -> None:
    """The worker side announces itself, so a scheduler in the same process can reach it
    (``ucm_layerwise_prefetch``); ``None`` withdraws it."""
    with _lock:
        if worker is None:
            _workers.pop(key, None)
        else:
            _workers[key] = weakref.ref(worker)


def worker(key: str) -> Any:
    with _lock:
        ref = _workers.get(key)
    return ref() if ref is not None else None


def live_stores() -> list[Any]:
    """The stores alive in this process (tests and the demo read their stats)."""
    with _lock:
        return [e[0] for e in _stores.values()]
