"""The worker times prefill forwards for a store's disk-hit gate (CPU: wall time)."""
from __future__ import annotations

import time

from ucm.integration.vllm.worker import _ForwardTimer
from ucm.tiers.hit_gate import SlowHitGate


class _Store:
    def __init__(self, mode: str = "auto"):
        self.slow_hits = SlowHitGate(mode)
        self.noted: list[tuple[int, float]] = []

    def note_compute(self, nbytes: int, seconds: float) -> None:
        self.noted.append((nbytes, seconds))


def test_a_prefill_step_without_loads_is_noted_as_bytes_over_seconds():
    store = _Store()
    timer = _ForwardTimer(store)
    timer.cuda = False
    timer.first_layer()
    time.sleep(0.01)
    timer.end(new_blocks=20, block_bytes=100)
    assert len(store.noted) == 1 and store.noted[0][0] == 2000 and store.noted[0][1] >= 0.01


def test_steps_with_loads_or_few_new_blocks_are_not_timed():
    store = _Store()
    timer = _ForwardTimer(store)
    timer.cuda = False
    timer.loads = True  # start_load_kv saw loads (vLLM 0.32 calls it after the forward: any time in the step)
    timer.first_layer()
    time.sleep(0.002)
    timer.end(new_blocks=100, block_bytes=100)
    assert not timer.loads, "the flag ends with its step"
    timer.first_layer()
    time.sleep(0.002)
    timer.end(new_blocks=_ForwardTimer.MIN_BLOCKS - 1, block_bytes=100)  # a decode step
    timer.first_layer()
    timer.end(new_blocks=100, block_bytes=100)  # implausibly fast (< MIN_SECONDS): not a forward's time
    timer.end(new_blocks=100, block_bytes=100)  # a step without layer hooks (nothing dumped)
    assert store.noted == []


def test_no_timing_unless_the_store_gates_its_disk_hits_automatically():
    for store in (_Store("always"), _Store("never"), object()):
        timer = _ForwardTimer(store)
        timer.cuda = False
        timer.first_layer()
        time.sleep(0.002)
        timer.end(new_blocks=100, block_bytes=100)
        assert not timer.on and getattr(store, "noted", []) == []


def test_on_cuda_the_forward_is_timed_by_events_read_a_step_later():
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA events")
    store = _Store()
    timer = _ForwardTimer(store)
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    timer.first_layer()
    for _ in range(50):  # the forward's kernels, tens of ms on any GPU
        x = x @ x / 64
    timer.end(new_blocks=20, block_bytes=100)
    assert store.noted == [], "never waits for the GPU"
    torch.cuda.synchronize()
    timer.first_layer()  # the next step reads the finished events
    assert len(store.noted) == 1 and store.noted[0][0] == 2000 and store.noted[0][1] >= 1e-3


def test_store_counters_keep_the_gates_refusals_apart_from_refusals_to_store():
    from ucm.integration.vllm.worker import STORE_COUNTERS, store_counters

    stats = {"promoted": 3, "tiers": [{"evictions": 2, "refused": 1, "dumped_blocks": 5}, {"refused": 4}],
             "slow_hits": {"allowed_lookups": 1, "refused_lookups": 7, "probes": 0, "mode": "auto"}}
    assert dict(zip(STORE_COUNTERS, store_counters(stats))) == dict(
        evictions=2, refused=5, dumped_blocks=5, refused_lookups=7)
