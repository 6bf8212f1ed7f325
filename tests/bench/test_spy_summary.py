"""bench/spy_summary.py: a py-spy raw profile summarised per process and thread, ucm's frames apart."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import spy_summary as ss  # noqa: E402

RAW = """\
process 7:"python3 trace_replay.py --worker ucm_lru";thread (7): MainThread;<module> (trace_replay.py:660);LLMEngine.step (vllm/v1/engine/llm_engine.py:304);UcmWorker.wait_for_save (/work/main/ucm/integration/vllm/worker.py:510);SlotPoolTier.dump_rows (/work/main/ucm/tiers/pool.py:300) 30
process 7:"python3 trace_replay.py --worker ucm_lru";thread (7): MainThread;<module> (trace_replay.py:660);LLMEngine.step (vllm/v1/engine/llm_engine.py:304);Qwen2Model.forward (vllm/model_executor/models/qwen2.py:400) 60
process 7:"python3 trace_replay.py --worker ucm_lru";thread (9): ucm-dump-submit_0;Thread._bootstrap (threading.py:1002);CudaPlaneCopier._submit_after (ucm/tiers/planes.py:370);batch_dma.copy (ucm/tiers/batch_dma.py:80) 10
process 8:"python3 trace_replay.py --worker full";thread (8): MainThread;<module> (trace_replay.py:660);Qwen2Model.forward (vllm/model_executor/models/qwen2.py:400) 50

not a stack line
"""


def test_summary_splits_processes_and_threads_and_finds_ucm_frames():
    s = ss.summarise(ss.parse(RAW.splitlines()))
    ucm, full = s['process 7:"python3 trace_replay.py --worker ucm_lru"'], s['process 8:"python3 trace_replay.py --worker full"']
    assert (ucm["samples"], full["samples"]) == (100, 50)
    main, submit = ucm["threads"]["thread (7): MainThread"], ucm["threads"]["thread (9): ucm-dump-submit_0"]
    assert (main["samples"], main["share"], main["ucm_samples"]) == (90, 0.9, 30)
    assert main["ucm"] == [("UcmWorker.wait_for_save (worker.py)", 30)]  # the outermost ucm frame, absolute path
    assert main["leaf"][0] == ("Qwen2Model.forward (qwen2.py)", 60)
    assert submit["ucm"] == [("CudaPlaneCopier._submit_after (planes.py)", 10)]  # a path relative to sys.path
    md = ss.markdown(s)
    assert "| thread (9): ucm-dump-submit_0 | 10 | 10.0% | 0 | 10 |" in md


def test_the_replay_loop_describes_a_thread_and_nested_processes_keep_the_child():
    raw = ['process 1:"bash";process 2:"python3 x";thread (2): MainThread;<module> (x.py:1);load (y.py:2) 50',
           'process 1:"bash";process 2:"python3 x";thread (2): MainThread;<module> (x.py:1);'
           'ReplayBench.replay (trace_replay.py:300);forward (z.py:3) 20']
    s = ss.summarise(ss.parse(raw))
    t = s['process 2:"python3 x"']["threads"]["thread (2): MainThread"]
    assert (t["samples"], t["within_samples"]) == (70, 20) and t["leaf"] == [("forward (z.py)", 20)]


def test_a_stack_without_process_or_thread_frames_is_one_process():
    s = ss.summarise(ss.parse(["<module> (a.py:1);f (a.py:2) 3", "Thread._bootstrap (threading.py:1);g (b.py:3) 1"]))
    threads = s["(one process)"]["threads"]
    assert threads["<module> (a.py)"]["samples"] == 3 and threads["Thread._bootstrap (threading.py)"]["samples"] == 1


def test_under_a_frame_splits_its_samples_by_callee_and_leaf():
    """``--under``: only the samples inside the named frame, by the frames just below it and by leaf."""
    u = ss.under(ss.parse(RAW.splitlines()), r"LLMEngine\.step ", depth=2)
    assert u["samples"] == 90  # the two stacks through LLMEngine.step; the submit thread and process 8 are not
    assert u["below"] == [("Qwen2Model.forward (qwen2.py)", 60),
                          ("UcmWorker.wait_for_save (worker.py) > SlotPoolTier.dump_rows (pool.py)", 30)]
    assert u["leaf"] == [("Qwen2Model.forward (qwen2.py)", 60), ("SlotPoolTier.dump_rows (pool.py)", 30)]
    assert "inside `LLMEngine\\.step `: 90 samples" in ss.under_markdown(u)
