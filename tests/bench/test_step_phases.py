"""bench/step_phases.py: an engine.step() call's time split into phases, on stand-in engine objects."""
from __future__ import annotations

import os
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

from step_phases import PHASES, StepPhases  # noqa: E402


def _sleeper(ms: float, then=None):
    def fn(*args, **kw):
        if then is not None:
            then()
        time.sleep(ms / 1e3)
        return "out"
    return fn


def _core():
    conn = types.SimpleNamespace(get_num_new_matched_tokens=_sleeper(4))
    kvm = types.SimpleNamespace(allocate_slots=_sleeper(3))
    sched = types.SimpleNamespace(connector=conn, kv_cache_manager=kvm, update_from_output=_sleeper(1))

    def schedule():
        sched.connector.get_num_new_matched_tokens(None, 0)
        sched.kv_cache_manager.allocate_slots()
        time.sleep(0.002)
    sched.schedule = schedule
    worker = types.SimpleNamespace(handle_preemptions=_sleeper(2), start_load_kv=_sleeper(5), wait_for_layer_load=_sleeper(1),
                                   save_kv_layer=_sleeper(1), wait_for_save=_sleeper(2),
                                   get_finished=_sleeper(0), get_block_ids_with_load_errors=_sleeper(0))

    def execute_model(*a, **k):
        time.sleep(0.004)  # inputs
        worker.handle_preemptions(None)
        worker.start_load_kv(None)
        for _ in range(2):
            worker.wait_for_layer_load("l")
            worker.save_kv_layer("l")
        return "future"

    def sample_tokens(*a, **k):
        worker.wait_for_save()
        return "tokens"
    executor = types.SimpleNamespace(execute_model=execute_model, sample_tokens=sample_tokens)
    return types.SimpleNamespace(scheduler=sched, model_executor=executor), worker


def test_a_step_call_is_split_into_its_phases():
    core, worker = _core()
    ph = StepPhases(core, worker)
    ph.begin()
    core.scheduler.schedule()
    assert core.model_executor.execute_model(None, non_block=True) == "future"  # results pass through
    core.model_executor.sample_tokens(None)
    time.sleep(0.01)  # waiting for an output
    core.scheduler.update_from_output(None, None)
    got = ph.end()
    assert set(got) <= set(PHASES)
    tol = 3.0  # ms: sleeps overshoot, never undershoot

    def near(k, ms):
        assert ms <= got[k] <= ms + tol, (k, got[k], ms)
    near("schedule", 9), near("sched.connector", 4), near("sched.alloc", 3)
    near("execute", 15), near("exec.to_load", 6), near("exec.preempt", 2), near("exec.load", 5), near("exec.layers", 4)
    near("sample", 2), near("sample.post", 2), near("update", 1), near("other", 10)
    assert 0 <= got["cpu"] < 10, "sleeping is waiting: the thread's CPU time stays far below the call's 48 ms"


def test_calls_outside_begin_and_end_are_not_counted_and_missing_hooks_are_skipped():
    core, _ = _core()
    ph = StepPhases(core, types.SimpleNamespace(start_load_kv=_sleeper(1)))  # a connector with one hook
    core.scheduler.schedule()  # before begin(): not counted
    ph.begin()
    got = ph.end()
    assert set(got) == {"other", "cpu"} and got["other"] < 5
