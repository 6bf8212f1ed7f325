"""bench/trace_summary.py finds the CUDA calls that held the CPU, and what called them."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

from trace_summary import blocking_calls  # noqa: E402


def _ev(cat, name, ts, dur, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid}


def test_the_longest_runtime_calls_come_with_the_ops_around_them():
    trace = {"traceEvents": [
        _ev("cpu_op", "wait_for_save", 1000, 9000),
        _ev("cpu_op", "aten::copy_", 2000, 7000),
        _ev("cuda_runtime", "cudaStreamSynchronize", 2500, 6000),  # 6 ms inside both ops
        _ev("cuda_runtime", "cudaMemcpyAsync", 20000, 10),
        _ev("cuda_runtime", "cudaMemcpyAsync", 20100, 30),
        _ev("cpu_op", "other_thread", 0, 50000, tid=2),  # another thread: not around the call
    ]}
    out = blocking_calls(trace, min_ms=1.0)
    assert out["totals"]["cudaMemcpyAsync"] == {"calls": 2, "ms": 0.04, "max_ms": 0.03}
    assert out["longest"] == [{"name": "cudaStreamSynchronize", "start_ms": 2.5, "ms": 6.0,
                               "inside": ["wait_for_save", "aten::copy_"]}]


def test_an_empty_trace_has_nothing_to_say():
    assert blocking_calls({"traceEvents": []}) == {}
