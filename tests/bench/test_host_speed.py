"""bench/host_speed.py: the host numbers every benchmark records beside its results."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import host_speed  # noqa: E402


def test_measure_gives_positive_timings_and_no_launches_without_cuda():
    h = host_speed.measure(cuda=False)
    assert h["python_ns_per_op"] > 0 and h["torch_op_us"] > 0
    assert h["cuda_launch_us"] is None
    assert set(h) == {"python_ns_per_op", "torch_op_us", "cuda_launch_us", "cpu_model"}


def test_a_slower_loop_reads_slower():
    fast = host_speed._best(lambda: sum(range(1000)), rounds=3)
    slow = host_speed._best(lambda: sum(range(100000)), rounds=3)
    assert slow > fast


def test_summary_names_each_number_and_the_cpu():
    line = host_speed.summary(dict(python_ns_per_op=41.2, torch_op_us=3.1, cuda_launch_us=6.2, cpu_model="Xeon"))
    assert line == "python 41.2 ns/op, torch op 3.1 us, CUDA launch 6.2 us (Xeon)"
    assert host_speed.summary(dict(python_ns_per_op=41.2, torch_op_us=3.1, cuda_launch_us=None)) == \
        "python 41.2 ns/op, torch op 3.1 us"
    assert host_speed.summary(None) == "n/a"
