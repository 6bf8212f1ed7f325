"""Scheduler -> worker lookups when the two sides live in different processes.

The store lives with the worker that fills it (one per TP rank). When the scheduler shares the
process (offline ``LLM``, GPU ``vllm serve`` with TP=1) it calls the store directly; otherwise
(vLLM CPU's serving executor, TP > 1) each worker answers lookups on a ZeroMQ IPC socket named
after the engine id and its rank, and the scheduler asks every rank. Frames: the request is an op
(``L`` lookup, ``Q`` lookup that records no sighting, ``P<owner>`` pin, ``U<owner>`` unpin) then the
keys; the reply is one byte per key (1 = held / pinned). An unreachable worker answers "miss" (and pins nothing).
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Optional

import zmq

log = logging.getLogger("ucm")
TIMEOUT_MS = 5000


def socket_path(engine_id: str, rank: int) -> str:
    name = f"ucm-{str(engine_id)[:36]}-r{rank}.ipc"
    return os.path.join(tempfile.gettempdir(), name)


class LookupServer:
    """Answers lookups for one worker's store on a background thread."""

    def __init__(self, store: Any, path: str):
        self.store = store
        self.path = path
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        if os.path.exists(path):
            os.unlink(path)
        self._sock.bind(f"ipc://{path}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ucm-lookup", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            op, *keys = self._sock.recv_multipart()
            try:
                found = _answer(self.store, op, keys)
            except Exception as exc:  # noqa: BLE001 - a broken lookup is a miss
                log.warning("ucm: lookup failed: %s", exc)
                found = [False] * len(keys)
            self._sock.send(bytes(bytearray(1 if f else 0 for f in found)))
        self._sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _answer(store: Any, op: bytes, keys: list[bytes]) -> list[bool]:
    kind, owner = op[:1], op[1:].decode()
    if kind in (b"L", b"Q"):
        return list(store.lookup(keys, record=kind == b"L")) if keys else []
    if kind == b"P":
        return list(store.pin(keys, owner)) if keys else []
    if kind == b"U":
        store.unpin(owner)
        return []
    raise ValueError(f"unknown lookup op {op[:16]!r}")


class LookupClient:
    """The scheduler's view of one rank's store in another process."""

    def __init__(self, path: str):
        self.path = path
        self._sock: Optional[zmq.Socket] = None
        self._warned = False

    def _connect(self) -> zmq.Socket:
        if self._sock is None:
            sock = zmq.Context.instance().socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
            sock.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
            sock.connect(f"ipc://{self.path}")
            self._sock = sock
        return self._sock

    def lookup(self, keys: list[bytes], record: bool = True) -> list[bool]:
        return self.ask(b"L" if record else b"Q", keys) if keys else []

    def pin(self, keys: list[bytes], owner: str) -> list[bool]:
        return self.ask(b"P" + owner.encode(), keys) if keys else []

    def unpin(self, owner: str) -> None:
        self.ask(b"U" + owner.encode(), [])

    def ask(self, op: bytes, keys: list[bytes]) -> list[bool]:
        try:
            sock = self._connect()
            sock.send_multipart([op, *keys])
            reply = sock.recv()
            return [b == 1 for b in reply[:len(keys)]] + [False] * (len(keys) - len(reply))
        except zmq.ZMQError as exc:
            if not self._warned:
                log.warning("ucm: no answer from the worker's store at %s (%s): counting misses", self.path, exc)
                self._warned = True
            if self._sock is not None:  # a REQ socket that timed out cannot be reused
                self._sock.close(0)
                self._sock = None
            return [False] * len(keys)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


class RankedLookup:
    """Lookups over every TP rank's store: in-process when the worker shares this process,
    else over IPC. A block counts as held only if every rank holds it."""

    def __init__(self, engine_id: str, tp_size: int):
        self.engine_id = engine_id
        self.tp_size = tp_size
        self._clients: dict[int, LookupClient] = {}
        self._disagreements = 0  # warned about (the first few only)

    def _rank(self, rank: int) -> Any:
        """Rank ``rank``'s store in this process, else a client that asks it over IPC."""
        from ucm.integration.vllm import stores

        store = stores.get(store_key(self.engine_id, rank))
        if store is not None:
            return store
        client = self._clients.get(rank)
        if client is None:
            client = self._clients[rank] = LookupClient(socket_path(self.engine_id, rank))
        return client

    def lookup(self, per_rank_keys: list[list[bytes]], record: bool = True) -> list[bool]:
        """``per_rank_keys[r]`` are rank r's keys of the same blocks; True where all ranks hold it.
        ``record``: a sighting for the stores' policies (``Store.lookup``)."""
        result: Optional[list[bool]] = None
        for rank, keys in enumerate(per_rank_keys):
            found = list(self._rank(rank).lookup(keys, record=record))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("ucm: rank %d holds %d of %d blocks, prefix %d", rank, sum(found), len(found),
                          found.index(False) if False in found else len(found))
            if result is not None and found != result and self._disagreements < 5:
                # ranks store the same blocks in the same steps: a difference means one dropped a block
                self._disagreements += 1
                i = next(i for i, (a, b) in enumerate(zip(result, found)) if a != b)
                log.warning("ucm: TP ranks disagree on block %d of a %d-block lookup (rank %d %s it, the ranks "
                            "before it %s); the block counts as a miss", i, len(found), rank,
                            "holds" if found[i] else "lacks", "lack" if found[i] else "hold")
            result = found if result is None else [a and b for a, b in zip(result, found)]
        return result or []

    def pin(self, per_rank_keys: list[list[bytes]], owner: str) -> bool:
        """Pin the blocks on every rank for ``owner``; True only if every rank pinned every block
        (else the caller unpins: what was pinned is released with ``unpin``)."""
        ok = True
        for rank, keys in enumerate(per_rank_keys):
            ok = all(self._rank(rank).pin(keys, owner)) and ok
            if not ok:
                break
        return ok

    def unpin(self, owner: str) -> None:
        for rank in range(self.tp_size):
            self._rank(rank).unpin(owner)

    def local_worker(self) -> Any:
        """The worker side when it shares this process and is the only rank (TP = 1), else None."""
        from ucm.integration.vllm import stores

        return stores.worker(store_key(self.engine_id, 0)) if self.tp_size == 1 else None

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


def store_key(engine_id: str, rank: int) -> str:
    return f"{engine_id}/r{rank}"
