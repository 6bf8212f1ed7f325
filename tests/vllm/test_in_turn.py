"""``ucm_layerwise_in_turn_tokens``: a hit the token budget left out waits until the tokens of the
step that filled the budget are back, as the workers report each step they ran, if that step is
short (computes at most that many new tokens). With vLLM's async scheduling the scheduler plans step
N + 1 before step N's output arrives; without the wait the deferred hit would be launched in N + 1
first, and that launch delays step N's tokens."""
from __future__ import annotations

import types

import pytest

from ucm.integration.vllm import scheduler as scheduler_mod
from ucm.integration.vllm.keys import KeyMaker
from ucm.integration.vllm.metadata import UcmWorkerMetadata
from ucm.integration.vllm.scheduler import UcmScheduler

from tests.vllm.test_upfront import _Hold, _output, _request


def _ran(*per_rank):
    return types.SimpleNamespace(kv_connector_worker_meta=UcmWorkerMetadata(
        {r: 0 for r in range(len(per_rank))}, dict(enumerate(per_rank))))


def _scheduler(in_turn_tokens=64, tp=1):
    # 80-token prompts: 4 blocks hit, 16 tokens to compute each; the budget fills with one request
    return UcmScheduler(_Hold(), KeyMaker(b"root", 16, tp), 16, layerwise=True, step_tokens=16,
                        in_turn_tokens=in_turn_tokens)


def test_a_deferred_hit_waits_for_the_tokens_of_the_step_that_filled_the_budget():
    sched = _scheduler()
    sched.update_connector_output(_ran(0))  # the workers report (warm-up steps)
    a, b = _request("a", 80), _request("b", 80)
    assert sched.get_num_new_matched_tokens(a, 0) == (64, False)
    assert sched.get_num_new_matched_tokens(b, 0) == (None, False)  # the step budget, as without the wait
    sched.build_connector_meta(_output(16))  # step 1: a
    sched.update_connector_output(_ran(0))  # async scheduling: step 2 is planned before step 1 reports
    assert sched.get_num_new_matched_tokens(b, 0) == (None, False)
    sched.build_connector_meta(_output(0))  # step 2: nothing to compute, so vLLM reads step 1's output
    sched.update_connector_output(_ran(1))
    assert sched.get_num_new_matched_tokens(b, 0) == (64, False)
    assert sched.stats.data["deferred"] == 2


@pytest.mark.parametrize("in_turn_tokens", [0, 15])  # off; on, but the step (16 tokens) is longer
def test_otherwise_the_deferred_hit_goes_into_the_next_step(in_turn_tokens):
    sched = _scheduler(in_turn_tokens)
    sched.update_connector_output(_ran(0))
    a, b = _request("a", 80), _request("b", 80)
    assert sched.get_num_new_matched_tokens(a, 0) == (64, False)
    assert sched.get_num_new_matched_tokens(b, 0) == (None, False)
    sched.build_connector_meta(_output(16))
    assert sched.get_num_new_matched_tokens(b, 0) == (64, False)


def test_a_step_below_the_budget_is_not_waited_for():
    sched = UcmScheduler(_Hold(), KeyMaker(b"root", 16, 1), 16, layerwise=True, step_tokens=64, in_turn_tokens=64)
    sched.update_connector_output(_ran(0))
    assert sched.get_num_new_matched_tokens(_request("a", 80), 0) == (64, False)  # 16 of 64 tokens
    sched.build_connector_meta(_output(16))
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (64, False)


def test_every_tp_rank_must_have_run_the_step():
    sched = _scheduler(tp=2)
    sched.update_connector_output(_ran(0, 0))
    assert sched.get_num_new_matched_tokens(_request("a", 80), 0) == (64, False)
    sched.build_connector_meta(_output(16))
    sched.update_connector_output(_ran(1, 0))  # rank 1 has not reported step 1
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (None, False)
    sched.update_connector_output(_ran(1, 1))
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (64, False)


def test_a_report_that_never_comes_is_waited_for_only_so_long(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(scheduler_mod.time, "monotonic", lambda: now[0])
    sched = _scheduler()
    sched.update_connector_output(_ran(0))
    assert sched.get_num_new_matched_tokens(_request("a", 80), 0) == (64, False)
    sched.build_connector_meta(_output(16))
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (None, False)
    now[0] += scheduler_mod.IN_TURN_TIMEOUT_S + 0.1
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (64, False)


def test_nothing_waits_before_the_workers_first_report():
    """A vLLM that does not pass worker metadata on: the setting does nothing rather than wait."""
    sched = _scheduler()
    assert sched.get_num_new_matched_tokens(_request("a", 80), 0) == (64, False)
    sched.build_connector_meta(_output(16))
    assert sched.get_num_new_matched_tokens(_request("b", 80), 0) == (64, False)


def test_worker_metadata_aggregates_both_fields_per_rank():
    m = UcmWorkerMetadata({0: 3}, {0: 5}).aggregate(UcmWorkerMetadata({1: 2}, {1: 4}))
    assert m.done_upto == {0: 3, 1: 2} and m.ran == {0: 5, 1: 4}
    assert UcmWorkerMetadata({0: 3}, {0: 5}).aggregate(UcmWorkerMetadata({0: 4}, {0: 4})).ran == {0: 5}


@pytest.mark.parametrize("value", [-1, True, "2048", None])
def test_the_setting_must_be_a_non_negative_integer(value):
    from ucm.integration.vllm import settings

    assert settings.parse_extra_config({"ucm_layerwise_in_turn_tokens": 2048}).layerwise_in_turn_tokens == 2048
    assert settings.parse_extra_config({}).layerwise_in_turn_tokens == 2048
    assert settings.parse_extra_config({"ucm_layerwise_in_turn_tokens": 0}).layerwise_in_turn_tokens == 0
    with pytest.raises(ValueError, match="ucm_layerwise_in_turn_tokens must be an integer >= 0"):
        settings.parse_extra_config({"ucm_layerwise_in_turn_tokens": value})



class _Scripted(_Hold):
    """The first lookup (request a's) finds every block; later ones find every block or none (``b_held``).
    Records each lookup's length."""

    def __init__(self, b_held: bool):
        super().__init__()
        self.b_held, self.sizes = b_held, []

    def lookup(self, per_rank, record=True):
        self.sizes.append(len(per_rank[0]))
        return [len(self.sizes) == 1 or self.b_held] * len(per_rank[0])


@pytest.mark.parametrize("b_held, want", [(True, (None, False)), (False, (0, False))])
def test_a_repeated_ask_the_step_must_defer_looks_up_one_block(b_held, want):
    """vLLM asks again about a waiting request every step; while the step's hits are full the answer
    depends only on whether the request has a hit at all (deferred, or computed now without one), so
    only its first block is looked up, and the answer is the one a whole lookup gave."""
    lookup = _Scripted(b_held)
    sched = UcmScheduler(lookup, KeyMaker(b"root", 16, 1), 16, layerwise=True, step_tokens=16, in_turn_tokens=0)
    a, b = _request("a", 1600), _request("b", 1600)
    assert sched.get_num_new_matched_tokens(a, 0) == (99 * 16, False)  # fills the step's token budget
    first = sched.get_num_new_matched_tokens(b, 0)  # b's first ask: a whole lookup
    again = sched.get_num_new_matched_tokens(b, 0)  # the same request asked again in this step
    assert lookup.sizes == [99, 99, 1]
    assert first == again == want


def test_a_step_that_filled_the_load_budget_is_waited_for_too():
    """``step_load_blocks``: 100 % hits (one token each to compute) served one a step; with
    ``in_turn_tokens`` the second waits until the first's token is back, not only for the next step
    (async scheduling would launch it first, and its launch and copies would delay that token)."""
    sched = UcmScheduler(_Hold(), KeyMaker(b"root", 16, 1), 16, layerwise=True, step_tokens=512,
                         step_load_blocks=4, in_turn_tokens=64)
    sched.update_connector_output(_ran(0))
    a, b = _request("a", 65), _request("b", 65)  # 4 blocks and 1 token each
    assert sched.get_num_new_matched_tokens(a, 0) == (64, False)
    assert sched.get_num_new_matched_tokens(b, 0) == (None, False)  # the load budget
    sched.build_connector_meta(_output(1))  # step 1: a
    assert sched.get_num_new_matched_tokens(b, 0) == (None, False)  # step 1's token not back
    sched.build_connector_meta(_output(0))
    sched.update_connector_output(_ran(1))
    assert sched.get_num_new_matched_tokens(b, 0) == (64, False)
    assert sched.stats.data["load_overflow"] == 1 and sched.stats.data["deferred"] == 1
