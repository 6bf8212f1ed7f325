"""Asynchronous dumps on real vLLM (CPU): with the store's copies slowed down (each plane copy
into the pool sleeps first, so a dump reads vLLM's KV cache late), the step does not wait for
them, vLLM keeps a finished request's blocks until its dumps are done (delay_free), preempted
requests' dumps are waited for before their blocks are reused, and outputs stay identical."""
from __future__ import annotations

import threading
import time

from tests.vllm import engine
from ucm.integration.vllm import stats
from ucm.integration.vllm.tiny_model import random_text


def _slow_copies(monkeypatch, delay: float) -> None:
    from ucm.tiers import pool

    orig = pool.copy_planes_cpu

    def slow(planes, plan, to_pool):
        if to_pool:  # dumps only: the copy thread reads vLLM's blocks `delay` seconds late
            time.sleep(delay)
        return orig(planes, plan, to_pool)

    monkeypatch.setattr(pool, "copy_planes_cpu", slow)


def _sides(llm):
    """(worker-side ucm worker, vLLM's scheduler) of an in-process engine."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    return get_kv_transfer_group()._worker, llm.llm_engine.engine_core.engine_core.scheduler


def _drive_until_idle(llm, worker, sched, timeout: float = 30.0) -> None:
    """Run short unrelated requests (their steps poll and commit the dumps) until no dump of the
    earlier requests is pending and vLLM holds no finished request's blocks."""
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        time.sleep(0.1)
        engine.generate(llm, [random_text(5, 5000 + i)], max_tokens=1)  # < 1 block: dumps nothing
        i += 1
        if (not worker.pending_dumps() and not worker._finishing
                and len(sched.requests) == 0) or time.monotonic() > deadline:
            return


def test_dumps_do_not_block_the_step(tiny_model, baseline, monkeypatch):
    delay = 1.0  # per plane copy: a step's dump (2 layers) takes >= 2 s on the copy thread (margin on a loaded machine)
    _slow_copies(monkeypatch, delay)
    texts = engine.prompts("shared")
    with engine.llm(tiny_model, engine.ktc(config={"max_cache_size": 64 << 20})) as llm:
        worker, sched = _sides(llm)
        waits: list[float] = []
        orig_wait = worker.wait_for_save

        def timed_wait(meta):
            t0 = time.perf_counter()
            orig_wait(meta)
            waits.append(time.perf_counter() - t0)

        worker.wait_for_save = timed_wait
        stats.reset_totals()
        t0 = time.perf_counter()
        first = engine.generate(llm, texts)
        took = time.perf_counter() - t0
        assert stats.totals()["dumped_blocks"] == 6 + 4 * 3  # submitted (committed later)
        assert max(waits) < delay / 2, waits  # a waiting wait_for_save would take >= 2 * delay
        engine.assert_same_outputs(first, baseline["shared"])
        # the dumps were still in flight when the requests finished: nothing hittable yet
        assert worker.pending_dumps() > 0, f"the first pass took {took:.2f} s"
        _drive_until_idle(llm, worker, sched)
        assert worker.pending_dumps() == 0 and stats.totals()["dump_failed_blocks"] == 0
        second = engine.generate(llm, texts)
    assert [o["cached"] for o in second] == [engine.full_blocks(o["prompt_len"]) * engine.BLOCK for o in second]
    engine.assert_same_outputs(second, baseline["shared"])


def test_finished_request_blocks_are_freed_only_after_its_dumps(tiny_model, baseline, monkeypatch):
    _slow_copies(monkeypatch, 1.0)  # generous: the first pass must finish while dumps still run
    texts = engine.prompts("shared")
    with engine.llm(tiny_model, engine.ktc(config={"max_cache_size": 64 << 20})) as llm:
        worker, sched = _sides(llm)
        conn = sched.connector
        lock = threading.Lock()
        delays: dict[str, bool] = {}
        freed: dict[str, float] = {}
        retired: dict[str, float] = {}

        orig_finished = conn._scheduler.request_finished

        def request_finished(request, block_ids):
            delay, params = orig_finished(request, block_ids)
            with lock:
                delays[request.request_id] = delay
            return delay, params

        conn._scheduler.request_finished = request_finished

        orig_free = sched._free_blocks

        def free_blocks(request):
            with lock:
                freed[request.request_id] = time.monotonic()
            return orig_free(request)

        sched._free_blocks = free_blocks

        orig_retire = worker._retire

        def retire(d):
            orig_retire(d)  # committed: no copy of d reads vLLM's blocks any more
            with lock:
                for r in d.req_ids:
                    retired[r] = time.monotonic()

        worker._retire = retire

        first = engine.generate(llm, texts, max_tokens=2)  # finish right after the prefill's dumps
        dumped = set(retired) | {r for d in list(worker._pending) for r in d.req_ids}
        delayed = {r for r, d in delays.items() if d}
        assert dumped and delayed == dumped, (delays, dumped)
        assert not delayed & set(freed), "a finished request's blocks were freed while its dumps ran"
        _drive_until_idle(llm, worker, sched)
        for r in dumped:
            assert r in freed and r in retired, (r, freed, retired)
            assert freed[r] >= retired[r], f"{r}: blocks freed {retired[r] - freed[r]:.3f} s before its dumps were done"
        second = engine.generate(llm, texts, max_tokens=2)
    assert [o["cached"] for o in second] == [engine.full_blocks(o["prompt_len"]) * engine.BLOCK for o in second]
    for got, want in ((first, baseline["shared"]), (second, baseline["shared"])):
        engine.assert_same_outputs(got, [dict(w, tokens=w["tokens"][:2], logprobs=w["logprobs"][:2]) for w in want])


def test_preempted_requests_wait_for_their_dumps(tiny_model, monkeypatch):
    """The preemption scenario of test_offline with slow copies: a preempted request's blocks are
    reused in the very next step, so its dumps are waited for first (handle_preemptions)."""
    _slow_copies(monkeypatch, 0.02)
    texts = engine.prompts("shared") + engine.prompts("distinct")
    kw = dict(num_gpu_blocks_override=24, max_num_seqs=8, max_model_len=512)
    with engine.llm(tiny_model, None, **kw) as llm:
        base = engine.generate(llm, texts, max_tokens=96)
    with engine.llm(tiny_model, engine.ktc(config={"max_cache_size": 64 << 20}), **kw) as llm:
        worker, sched = _sides(llm)
        flushed = []
        orig_flush = worker._flush

        def flush(req_id):
            if worker._req_dumps.get(req_id):
                flushed.append(req_id)
            orig_flush(req_id)
            assert not worker._req_dumps.get(req_id)

        worker._flush = flush
        stats.reset_totals()
        first = engine.generate(llm, texts, max_tokens=96)
        t1 = stats.totals()
        _drive_until_idle(llm, worker, sched)
        second = engine.generate(llm, texts, max_tokens=96)
    assert t1["lookup_tokens"] > sum(o["prompt_len"] for o in first), "no request was preempted and resumed"
    assert flushed, "no preempted request had a dump in flight"
    assert [o["cached"] for o in second] == [engine.full_blocks(o["prompt_len"]) * engine.BLOCK for o in second]
    engine.assert_same_outputs(first, base)
    engine.assert_same_outputs(second, base)
