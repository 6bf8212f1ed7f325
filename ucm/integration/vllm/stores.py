"""One store per process and configuration, shared by the connector's scheduler and worker sides.

With one worker (offline ``LLM``, ``vllm serve`` with TP=1) the scheduler and the worker live in
the same engine-core process, so the scheduler's ``lookup`` sees exactly what the worker dumped.
"""
from __future__ import annotations

import threading
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


def live_stores() -> list[Any]:
    """The stores alive in this process (tests and the demo read their stats)."""
    with _lock:
        return [e[0] for e in _stores.values()]
