"""Load-bound steps (e.g. a 100 % hit: one block to compute) launch every layer's copies before the
forward; steps with tokens to compute launch them as the model reaches each layer."""
from __future__ import annotations

import types

import pytest
import torch

from ucm.integration.vllm import worker as worker_mod
from ucm.integration.vllm.keys import KeyMaker
from ucm.integration.vllm.metadata import LoadSpec, UcmConnectorMetadata
from ucm.integration.vllm.scheduler import UPFRONT_RATIO, UcmScheduler, load_bound

from tests.vllm.test_worker_loads import LAYERS, ROW, stored_and_worker


def _output(step_tokens: int):
    cached = types.SimpleNamespace(req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set())
    return types.SimpleNamespace(scheduled_new_reqs=[], scheduled_cached_reqs=cached,
                                 num_scheduled_tokens={"r": step_tokens}, total_num_scheduled_tokens=step_tokens)


@pytest.mark.parametrize("blocks, step_tokens, upfront", [
    (1000, 16, True),     # 16k tokens fully hit: one block to compute
    (800, 3200, False),   # an 80 % hit: 4 tokens loaded per token computed, layer by layer
    (64, 64, True),       # 1024 tokens loaded for 64 computed: exactly the ratio
    (63, 64, False),
])
def test_the_scheduler_marks_load_bound_steps(blocks, step_tokens, upfront):
    assert UPFRONT_RATIO == 16  # the cases above are written for it
    sched = UcmScheduler(None, KeyMaker(b"root", 16, 1), 16, layerwise=True)
    sched.pending_loads["r"] = LoadSpec("r", [b"h"] * blocks, list(range(blocks)), layerwise=True)
    assert sched.build_connector_meta(_output(step_tokens)).upfront is upfront
    assert load_bound(blocks * 16, step_tokens) is upfront  # the same rule decides a prefetch


def test_load_bound_needs_a_load_and_counts_at_least_one_token_computed():
    assert not load_bound(0, 0) and load_bound(16, 0) and not load_bound(15, 0)


def test_loads_between_steps_never_mark_a_step_upfront():
    sched = UcmScheduler(None, KeyMaker(b"root", 16, 1), 16, layerwise=False)
    sched.pending_loads["r"] = LoadSpec("r", [b"h"] * 1000, list(range(1000)), layerwise=False)
    assert sched.build_connector_meta(_output(16)).upfront is False


@pytest.mark.parametrize("upfront", [True, False])
def test_an_upfront_step_launches_every_layer_before_the_forward(upfront, monkeypatch):
    stored = [f"u{i}".encode() for i in range(4)]
    store, keys, src, dst, worker = stored_and_worker(2, stored)
    layers_read = []
    real_read, real_load = store.read_planes, store.load_blocks
    store.read_planes = lambda br, planes, **k: layers_read.append((k["offset"], len(planes))) or real_read(
        br, planes, **k)
    store.load_blocks = lambda ids, planes, rows: layers_read.append(("all", len(planes))) or real_load(
        ids, planes, rows)
    monkeypatch.setattr(worker_mod, "LOOKAHEAD", 1)
    monkeypatch.setattr(worker_mod, "REFILL", 1)
    spec = LoadSpec("a", stored, [5, 6, 7, 8], layerwise=True)
    assert store.pin([keys.rank_key(h, 0) for h in stored], "a")
    worker.start_load_kv(UcmConnectorMetadata(loads=[spec], seq=1, upfront=upfront))
    # up front: every layer's planes (K and V of each) in one load_blocks call; else layer 0 alone
    assert layers_read == ([("all", 2 * LAYERS)] if upfront else [(0, 2)])
    for name in dst:
        worker.wait_for_layer_load(name)
    assert layers_read == ([("all", 2 * LAYERS)] if upfront else [(i * 2 * ROW, 2) for i in range(LAYERS)])
    worker.finish_layer_loads()
    assert worker.get_block_ids_with_load_errors() == set() and not store._reading
    for name in dst:
        for row, src_row in zip([5, 6, 7, 8], range(4)):
            assert torch.equal(dst[name][:, row], src[name][:, src_row])
    store.close()


def _request(rid, n_tokens, params=None):
    return types.SimpleNamespace(request_id=rid, all_token_ids=list(range(100, 100 + n_tokens)), num_tokens=n_tokens,
                                 block_hashes=[], mm_features=[], lora_request=None, cache_salt=None,
                                 prompt_embeds=None, kv_transfer_params=params)


class _Miss:
    def lookup(self, per_rank, record=True):
        return [False] * len(per_rank[0])


@pytest.mark.parametrize("params, stored", [
    (None, True), ({}, True), ({"ucm_store": True}, True), ({"ucm_store": False}, False),
    ({"ucm_store": "no"}, True),  # a bad value is logged, and the request stored as usual
])
def test_a_request_can_opt_out_of_being_stored(params, stored, caplog):
    """``kv_transfer_params={"ucm_store": False}``: its prefix is still looked up, its blocks are not dumped."""
    sched = UcmScheduler(_Miss(), KeyMaker(b"root", 16, 1), 16, layerwise=True)
    req = _request("q", 64, params)
    with caplog.at_level("ERROR", logger="ucm"):
        assert sched.get_num_new_matched_tokens(req, 0) == (0, False)
    assert ("'ucm_store' must be true or false" in caplog.text) is (params == {"ucm_store": "no"})
    new = types.SimpleNamespace(req_id="q", block_ids=([0, 1, 2, 3],), num_computed_tokens=0)
    out = _output(64)
    out.scheduled_new_reqs = [new]
    out.num_scheduled_tokens = {"q": 64}
    meta = sched.build_connector_meta(out)
    assert [d.req_id for d in meta.dumps] == (["q"] if stored else [])


class _Hold:
    """Every block is held and pins succeed; ``worker``: the worker sharing the scheduler's thread."""

    def __init__(self, worker=None):
        self.worker = worker

    def lookup(self, per_rank, record=True):
        return [True] * len(per_rank[0])

    def pin(self, keys, owner):
        return True

    def unpin(self, owner):
        pass

    def local_worker(self):
        return self.worker


@pytest.mark.parametrize("prompt, prefetch, started", [
    (1008, True, True),     # 62 blocks hit, 16 tokens to compute: load-bound, started at allocation
    (1008, False, False),   # the setting off
    (160, True, False),     # 9 blocks hit for 16 tokens: 144 < 16 x 16, left to start_load_kv
])
def test_a_load_bound_hit_is_prefetched_at_allocation(prompt, prefetch, started):
    got = []
    worker = type("W", (), {"prefetch": lambda self, spec: got.append(spec) or True})()
    sched = UcmScheduler(_Hold(worker), KeyMaker(b"root", 16, 1), 16, layerwise=True, prefetch=prefetch)
    r = _request("r", prompt)
    n, _ = sched.get_num_new_matched_tokens(r, 0)
    assert n == prompt - 16
    blocks = types.SimpleNamespace(get_block_ids=lambda: (list(range(100, 100 + prompt // 16)),))
    sched.update_state_after_alloc(r, blocks, n)
    assert [s.req_id for s in got] == (["r"] if started else [])
    if started:
        assert got[0] is sched.pending_loads["r"] and got[0].block_ids == list(range(100, 100 + n // 16))
    assert sched.build_connector_meta(_output(16)).loads[0].req_id == "r"  # the step still lists it


@pytest.mark.parametrize("blocks, limit, upfront", [
    (200, 0, False),    # a 4k-token 80 % hit, the setting off: layer by layer
    (200, 256, True),   # small enough: every layer up front
    (257, 256, False),  # past the limit and not load-bound
    (1000, 256, True),  # load-bound (16 tokens computed) whatever the limit
])
def test_small_hits_load_up_front_with_upfront_blocks(blocks, limit, upfront):
    sched = UcmScheduler(None, KeyMaker(b"root", 16, 1), 16, layerwise=True, upfront_blocks=limit)
    sched.pending_loads["r"] = LoadSpec("r", [b"h"] * blocks, list(range(blocks)), layerwise=True)
    assert sched.build_connector_meta(_output(16 if blocks == 1000 else 800)).upfront is upfront


def test_no_load_is_never_up_front():
    sched = UcmScheduler(None, KeyMaker(b"root", 16, 1), 16, layerwise=True, upfront_blocks=256)
    assert sched.build_connector_meta(_output(800)).upfront is False
