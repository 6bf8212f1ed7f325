"""bench/profile_layerwise.py: its instruments pass every argument of the copier's real signatures on
(a wrapper that dropped the copier's ``whole`` keyword broke the fourteenth device session's profile)."""
from __future__ import annotations

import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import profile_layerwise  # noqa: E402
from ucm.integration.vllm import lookup_rpc, scheduler, worker  # noqa: E402
from ucm.tiers import batch_dma, planes, pool  # noqa: E402


@pytest.mark.parametrize("name", ["submit", "_direct"])
def test_copier_wrappers_pass_the_real_signature_on(monkeypatch, name):
    real = getattr(planes.CudaPlaneCopier, name)
    seen = {}

    def fake(self, *args, **kw):
        seen.update(args=args, kw=kw)
        return "done"

    # every attribute instrument() replaces is saved first, so the test leaves them as they were
    for owner, attrs in ((scheduler.UcmScheduler, ("get_num_new_matched_tokens", "build_connector_meta")),
                         (lookup_rpc.RankedLookup, ("lookup", "pin")),
                         (worker.UcmWorker, ("start_load_kv", "wait_for_layer_load", "save_kv_layer", "wait_for_save",
                                             "finish_layer_loads", "finished_loads", "poll_dumps",
                                             "_start_layer_loads", "_issue_layers", "handle_preemptions")),
                         (pool.SlotPoolTier, ("_plan", "_submit_planes")),
                         (planes.CudaPlaneCopier, ("submit", "_direct", "_copy_runs", "_submit_after")),
                         (batch_dma, ("copy", "descriptors")), (planes, ("row_groups",))):
        for attr in attrs:
            monkeypatch.setattr(owner, attr, getattr(owner, attr))
    monkeypatch.setattr(planes.CudaPlaneCopier, name, fake)
    profile_layerwise.instrument()

    params = list(inspect.signature(real).parameters.values())[1:]  # after self
    args = [object() for p in params if p.default is inspect.Parameter.empty]
    kw = {p.name: True for p in params if p.default is not inspect.Parameter.empty}
    assert kw, f"{name} has keyword parameters to pass on"
    plan = type("Plan", (), {"runs": [], "pairs": [], "__len__": lambda self: 0})()
    args[:2] = [], plan  # (planes, plan, to_pool, ...): the wrappers count both
    assert getattr(planes.CudaPlaneCopier, name)(object(), *args, **kw) == "done"
    assert seen["kw"] == kw  # e.g. whole=True reached the copier
