"""A finished request whose dump may still read its blocks keeps them (``delay_free``) until the
worker reports the dump done; the scheduler counts such requests and the HBM they hold meanwhile
(blocks x steps), the cost of storing in a stream whose HBM is full."""
from __future__ import annotations

import types

from ucm.integration.vllm.keys import KeyMaker
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
