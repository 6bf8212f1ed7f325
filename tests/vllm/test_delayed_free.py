"""A finished request whose dump may still read its blocks keeps them (``delay_free``) until the
worker reports the dump done; the scheduler counts such requests and the HBM they hold meanwhile
(blocks x steps), the cost of storing in a stream whose HBM is full."""
from __future__ import annotations

import types

from ucm.integration.vllm.keys import KeyMaker, RequestKeys
from ucm.integration.vllm.scheduler import UcmScheduler

from tests.vllm.test_upfront import _Miss, _request


def _step_with_new(req_id, block_ids, tokens):
    cached = types.SimpleNamespace(req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set())
    new = types.SimpleNamespace(req_id=req_id, block_ids=(block_ids,), num_computed_tokens=0)
    return types.SimpleNamespace(scheduled_new_reqs=[new], scheduled_cached_reqs=cached,
                                 num_scheduled_tokens={req_id: tokens}, total_num_scheduled_tokens=tokens)


def _empty_step():
    cached = types.SimpleNamespace(req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set())
    return types.SimpleNamespace(scheduled_new_reqs=[], scheduled_cached_reqs=cached, num_scheduled_tokens={},
                                 total_num_scheduled_tokens=0)


def test_delayed_frees_and_the_blocks_they_hold_are_counted():
    sched = UcmScheduler(_Miss(), KeyMaker(b"root", 16, 1), 16, layerwise=True)
    r = _request("r", 64)
    assert sched.get_num_new_matched_tokens(r, 0) == (0, False)
    meta = sched.build_connector_meta(_step_with_new("r", [5, 6, 7, 8], 64))  # step 1 dumps its 4 blocks
    assert [len(d.block_ids) for d in meta.dumps] == [4]
    assert sched.request_finished(r, [5, 6, 7, 8]) == (True, None)  # no report yet: the dump may still read them
    assert sched.stats.data["delayed_frees"] == 1
    sched.build_connector_meta(_empty_step())  # step 2
    sched.build_connector_meta(_empty_step())  # step 3
    sched.update_connector_output(types.SimpleNamespace(kv_connector_worker_meta=None, finished_sending={"r"}))
    assert sched.stats.data["delayed_free_block_steps"] == 4 * 2  # 4 blocks, held from step 1 to step 3
    sched.update_connector_output(types.SimpleNamespace(kv_connector_worker_meta=None, finished_sending={"r"}))
    assert sched.stats.data["delayed_free_block_steps"] == 8 and not sched.held  # counted once


class _Holds:
    """A store holding the given keys; records each lookup's size and ``record``."""

    def __init__(self, keys):
        self.keys, self.calls = set(keys), []

    def lookup(self, per_rank, record=True):
        self.calls.append((len(per_rank[0]), record))
        return [k in self.keys for k in per_rank[0]]


def test_a_prefix_from_vllms_own_cache_is_dumped_only_past_what_the_store_holds():
    """vLLM found 3 of a request's 5 blocks in its own prefix cache and the store holds blocks 0 and 1:
    the step dumps blocks 2 to 4 (block 2, missing in the store, is repaired), not all 5. The check of
    vLLM's blocks is no sighting for the store's policies; the lookup past them is."""
    km = KeyMaker(b"root", 16, 1)
    r = _request("r", 80)
    store = _Holds(km.rank_keys(km.hashes(RequestKeys(r), 2), 0))
    sched = UcmScheduler(store, km, 16, layerwise=True)
    assert sched.get_num_new_matched_tokens(r, 48) == (0, False)  # nothing past block 2 held
    assert store.calls == [(3, False), (1, True)]
    step = _step_with_new("r", [5, 6, 7, 8, 9], 32)
    step.scheduled_new_reqs[0].num_computed_tokens = 48
    assert [d.block_ids for d in sched.build_connector_meta(step).dumps] == [[7, 8, 9]]


def test_a_whole_prompt_from_vllms_own_cache_dumps_only_its_last_block():
    """A 100 % HBM hit (vLLM computes only the last block): the check runs though nothing is looked up past
    vLLM's blocks, and the step dumps the one block it computes, not the whole prompt again."""
    km = KeyMaker(b"root", 16, 1)
    r = _request("r", 64)
    store = _Holds(km.rank_keys(km.hashes(RequestKeys(r), 4), 0))
    sched = UcmScheduler(store, km, 16, layerwise=True)
    assert sched.get_num_new_matched_tokens(r, 48) == (0, False)
    assert store.calls == [(3, False)]
    step = _step_with_new("r", [5, 6, 7, 8], 16)
    step.scheduled_new_reqs[0].num_computed_tokens = 48
    assert [d.block_ids for d in sched.build_connector_meta(step).dumps] == [[8]]
