"""Scheduler -> worker lookups across processes (here: threads over a real IPC socket)."""
from __future__ import annotations

import tempfile
import uuid

from ucm.integration.vllm import lookup_rpc, stores


class _Store:
    def __init__(self, held):
        self.held = set(held)

    def lookup(self, keys):
        return [k in self.held for k in keys]


def test_ranked_lookup_over_ipc_needs_every_rank():
    eid = uuid.uuid4().hex
    servers = [lookup_rpc.LookupServer(_Store({b"a/tp0", b"b/tp0"}), lookup_rpc.socket_path(eid, 0)),
               lookup_rpc.LookupServer(_Store({b"a/tp1"}), lookup_rpc.socket_path(eid, 1))]
    try:
        look = lookup_rpc.RankedLookup(eid, 2)
        assert look.lookup([[b"a/tp0", b"b/tp0", b"c/tp0"], [b"a/tp1", b"b/tp1", b"c/tp1"]]) == [True, False, False]
        look.close()
    finally:
        for s in servers:
            s.close()


def test_in_process_store_is_used_directly():
    eid = uuid.uuid4().hex
    key = lookup_rpc.store_key(eid, 0)
    stores.acquire(key, lambda: _Store({b"x"}))
    try:
        assert lookup_rpc.RankedLookup(eid, 1).lookup([[b"x", b"y"]]) == [True, False]
    finally:
        stores.release(key)


def test_unreachable_worker_counts_misses(monkeypatch):
    monkeypatch.setattr(lookup_rpc, "TIMEOUT_MS", 200)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp())
    look = lookup_rpc.RankedLookup(uuid.uuid4().hex, 1)
    assert look.lookup([[b"x", b"y"]]) == [False, False]
    look.close()
