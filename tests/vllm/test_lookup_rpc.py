"""Scheduler -> worker lookups across processes (here: threads over a real IPC socket)."""
from __future__ import annotations

import tempfile
import uuid

from ucm.integration.vllm import lookup_rpc, stores


class _Store:
    def __init__(self, held):
        self.held = set(held)
        self.pins: dict[str, list[bytes]] = {}

    def lookup(self, keys, record=True):
        self.recorded = getattr(self, "recorded", []) + [record]
        return [k in self.held for k in keys]

    def pin(self, keys, owner):
        self.pins.setdefault(owner, []).extend(k for k in keys if k in self.held)
        return self.lookup(keys)

    def unpin(self, owner):
        self.pins.pop(owner, None)


def test_ranked_lookup_over_ipc_needs_every_rank():
    eid = uuid.uuid4().hex
    servers = [lookup_rpc.LookupServer(_Store({b"a/tp0", b"b/tp0"}), lookup_rpc.socket_path(eid, 0)),
               lookup_rpc.LookupServer(_Store({b"a/tp1"}), lookup_rpc.socket_path(eid, 1))]
    try:
        look = lookup_rpc.RankedLookup(eid, 2)
        assert look.lookup([[b"a/tp0", b"b/tp0", b"c/tp0"], [b"a/tp1", b"b/tp1", b"c/tp1"]]) == [True, False, False]
        look.close()
        assert look._disagreements == 1, "rank 0 holds b, rank 1 does not: warned about"
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


def test_pins_travel_over_ipc_and_need_every_rank():
    eid = uuid.uuid4().hex
    stores_ = [_Store({b"a/tp0", b"b/tp0"}), _Store({b"a/tp1", b"b/tp1"})]
    servers = [lookup_rpc.LookupServer(s, lookup_rpc.socket_path(eid, r)) for r, s in enumerate(stores_)]
    try:
        look = lookup_rpc.RankedLookup(eid, 2)
        assert look.pin([[b"a/tp0", b"b/tp0"], [b"a/tp1", b"b/tp1"]], "req-1") is True
        assert stores_[0].pins == {"req-1": [b"a/tp0", b"b/tp0"]} and stores_[1].pins == {"req-1": [b"a/tp1", b"b/tp1"]}
        assert look.pin([[b"a/tp0", b"c/tp0"], [b"a/tp1", b"c/tp1"]], "req-2") is False
        look.unpin("req-1")
        look.unpin("req-2")
        assert stores_[0].pins == {} and stores_[1].pins == {}
        look.close()
    finally:
        for s in servers:
            s.close()


def test_scheduler_warns_when_a_requests_hit_shrinks_between_steps(caplog):
    """A request asked again (e.g. after the step budget deferred it) that now hits fewer blocks
    than before: its blocks were evicted in between. Counted as what it hits now, and warned about."""
    import types

    from ucm.integration.vllm.keys import KeyMaker
    from ucm.integration.vllm.scheduler import UcmScheduler

    class Lookup:
        held = 4

        def lookup(self, per_rank, record=True):
            return [i < self.held for i in range(len(per_rank[0]))]

        def pin(self, keys, owner):
            return True

        def unpin(self, owner):
            pass

    look = Lookup()
    sched = UcmScheduler(look, KeyMaker(b"root", 16, 1), 16, layerwise=True, step_tokens=1)
    req = types.SimpleNamespace(request_id="r", all_token_ids=list(range(100, 180)), num_tokens=80, block_hashes=[],
                                mm_features=[], lora_request=None, cache_salt=None, prompt_embeds=None)
    sched.step_new_tokens = 1  # the step is full: deferred
    assert sched.get_num_new_matched_tokens(req, 0) == (None, False)
    sched.step_new_tokens, look.held = 0, 2  # next step: two blocks gone meanwhile
    with caplog.at_level("WARNING", logger="ucm"):
        assert sched.get_num_new_matched_tokens(req, 0) == (32, False)
    assert "prefix hit now ends at block 2, an earlier lookup's at block 4" in caplog.text


def test_the_in_process_worker_is_found_at_tp1_only_and_held_weakly():
    """``ucm_layerwise_prefetch`` reaches the worker of rank 0 when it shares the scheduler's process
    and TP = 1; the registry does not keep a worker alive once its engine dropped it."""
    import gc

    from ucm.integration.vllm import lookup_rpc, stores

    class Worker:
        pass

    w = Worker()
    stores.register_worker(lookup_rpc.store_key("eng-w", 0), w)
    try:
        assert lookup_rpc.RankedLookup("eng-w", 1).local_worker() is w
        assert lookup_rpc.RankedLookup("eng-w", 2).local_worker() is None  # TP > 1: every rank has its own
        assert lookup_rpc.RankedLookup("other", 1).local_worker() is None
        del w
        gc.collect()
        assert lookup_rpc.RankedLookup("eng-w", 1).local_worker() is None
    finally:
        stores.register_worker(lookup_rpc.store_key("eng-w", 0), None)


def test_a_lookup_that_records_no_sighting_travels_over_ipc():
    eid = uuid.uuid4().hex
    store = _Store({b"a/tp0"})
    server = lookup_rpc.LookupServer(store, lookup_rpc.socket_path(eid, 0))
    try:
        look = lookup_rpc.RankedLookup(eid, 1)
        assert look.lookup([[b"a/tp0", b"b/tp0"]]) == [True, False]
        assert look.lookup([[b"a/tp0", b"b/tp0"]], record=False) == [True, False]
        assert store.recorded == [True, False]
        look.close()
    finally:
        server.close()


def test_the_scheduler_records_one_sighting_a_request_however_often_vllm_asks():
    """vLLM asks about a waiting request in every step until it schedules it (the step's token budget or KV
    cache full, a deferred hit): a CPU replay near capacity asked about one request 12 times. Only the first
    lookup is a sighting for the stores' admission and eviction policies; a new request of the same id is a new one."""
    import types

    from ucm.integration.vllm.keys import KeyMaker
    from ucm.integration.vllm.scheduler import UcmScheduler

    class Lookup:
        def __init__(self):
            self.records = []

        def lookup(self, per_rank, record=True):
            self.records.append(record)
            return [False] * len(per_rank[0])

    def request(rid):
        return types.SimpleNamespace(request_id=rid, all_token_ids=list(range(100, 180)), num_tokens=80,
                                     block_hashes=[], mm_features=[], lora_request=None, cache_salt=None,
                                     prompt_embeds=None)

    look = Lookup()
    sched = UcmScheduler(look, KeyMaker(b"root", 16, 1), 16, layerwise=True)
    a = request("a")
    for _ in range(3):
        assert sched.get_num_new_matched_tokens(a, 0) == (0, False)
    assert sched.get_num_new_matched_tokens(request("b"), 0) == (0, False)
    sched.request_finished(a, [])
    assert sched.get_num_new_matched_tokens(request("a"), 0) == (0, False)  # the id again, a new request
    assert look.records == [True, False, False, True, True]
