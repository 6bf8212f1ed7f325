"""bench/hook_cpu.py: one hit step through ucm's real hooks with CUDA stood in for, on the CPU."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import hook_cpu  # noqa: E402


@pytest.mark.parametrize("requests, hit, upfront", [(1, 1.0, True), (2, 0.8, False)])
def test_a_hit_step_runs_the_gpu_copier_path_and_restores_cuda(requests, hit, upfront):
    real = (torch.cuda.current_stream, torch.cuda.Event, torch.Tensor.record_stream)
    monkey: list = []
    hook_cpu.stand_in_cuda(monkey)
    s = None
    try:
        s = hook_cpu.Setup(requests, 24, hit)
        got = [s.step() for _ in range(2)]
    finally:
        if s is not None:
            s.close()
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)
    assert (torch.cuda.current_stream, torch.cuda.Event, torch.Tensor.record_stream) == real
    for r in got:
        assert r["upfront"] is upfront
        assert all(v >= 0 for k, v in r.items() if k != "upfront")
        # the loads took the GPU copier's batched-DMA path: a command and an event per group of planes
        # (layer-wise: 28 layers, 4 a group, 7 at least; an upfront load of every layer: one per stage;
        # a staged dump records events of its own), each step
        assert r["events"] >= r["dma_commands"] >= (1 if upfront else hook_cpu.LAYERS // 4)


def test_a_decode_step_dumps_its_filled_blocks_in_one_command():
    """--decode: D of B running requests fill a block each step; their scattered blocks are a small call,
    dumped in one batched-DMA command with one event (not a kernel and an event per plane)."""
    monkey: list = []
    hook_cpu.stand_in_cuda(monkey)
    s = None
    try:
        s = hook_cpu.DecodeSetup(8, 3, blocks=8)
        got = [s.step() for _ in range(6)]  # requests reaching their last block start over
    finally:
        if s is not None:
            s.close()
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)
    for r in got:
        assert r["dumped"] == 3 and (r["dma_commands"], r["events"]) == (1, 1)


def test_the_staged_path_timing_moves_planes_a_staging_buffer_at_a_time():
    """--staged ROWS: the copier's staged path alone; with k planes a staging buffer a call issues
    ceil(28 / k) DMA commands each way (28 a plane at a time), and the module's switches come back."""
    from ucm.tiers import planes

    before = (planes.STAGE_PLANES, planes.SMALL_CALL_BYTES, planes.MIN_RUN_BYTES, planes.MAX_DIRECT_RUNS)
    monkey: list = []
    hook_cpu.stand_in_cuda(monkey)
    try:
        got = {k: hook_cpu.staged_call_ms(32, k, reps=1) for k in (1, 4, 8)}
    finally:
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)
    assert [(got[k]["dump_dma_commands"], got[k]["load_dma_commands"]) for k in (1, 4, 8)] == [(28, 28), (7, 7), (4, 4)]
    assert all(v >= 0 for r in got.values() for v in r.values())
    assert (planes.STAGE_PLANES, planes.SMALL_CALL_BYTES, planes.MIN_RUN_BYTES, planes.MAX_DIRECT_RUNS) == before


def test_the_bandwidth_calls_launch_scattered_rows_with_one_completion_for_their_uva_kernels():
    """--bandwidth-call: dram_bandwidth's connector calls with CUDA and the index kernels stood in. On
    fragmented slots every plane goes through a UVA kernel; a dump's planes and a whole load's share the
    completion recorded after a stage's last kernel (one event a stage, not one a plane), and the stand-ins
    come off again."""
    real = (torch.Tensor.index_copy_, torch.Tensor.index_select, torch.index_select, torch.Tensor.copy_)
    monkey: list = []
    hook_cpu.stand_in_cuda(monkey)
    hook_cpu.stand_in_index_kernels(monkey)
    try:
        got = hook_cpu.bandwidth_call_ms(300, fragmented=True, reps=2)  # two stages (146 + 154 blocks)
    finally:
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)
    assert (torch.Tensor.index_copy_, torch.Tensor.index_select, torch.index_select, torch.Tensor.copy_) == real
    # a stage: one event for its index upload (copy stream), one for all its planes' kernels (28 before)
    assert (got["dump_dma_commands"], got["dump_events"]) == (0, 4)
    assert (got["load_dma_commands"], got["load_events"]) == (0, 4)
    assert got["dump_ms"] > 0 and got["load_ms"] > 0


def test_an_hbm_hit_step_loads_nothing_and_dumps_no_stored_block():
    """--hbm-hit: the stored prefixes are vLLM's own cache hits: no copy is launched for the held head,
    and the step dumps only each prompt's last block (computed anew), which the store holds already."""
    monkey: list = []
    hook_cpu.stand_in_cuda(monkey)
    s = None
    try:
        s = hook_cpu.Setup(2, 24, 1.0, hbm_hit=True)
        got = [s.step() for _ in range(2)]
        skipped = s.store.stats()["skipped"]
    finally:
        if s is not None:
            s.close()
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)
    assert [(r["dma_commands"], r["events"]) for r in got] == [(0, 0), (0, 0)]
    assert skipped == 2 * 2  # the last block of 2 prompts, 2 steps; not their 23 held blocks each
