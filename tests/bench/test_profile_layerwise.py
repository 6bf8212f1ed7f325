"""bench/profile_layerwise.py: its instruments pass every argument of the copier's real signatures on
(a wrapper that dropped the copier's ``whole`` keyword broke the fifteenth device session's profile)."""
from __future__ import annotations

import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import profile_layerwise  # noqa: E402
from ucm.tiers import planes  # noqa: E402


@pytest.mark.parametrize("name", ["submit", "_direct"])
def test_copier_wrappers_pass_the_real_signature_on(monkeypatch, name):
    real = getattr(planes.CudaPlaneCopier, name)
    seen = {}

    def fake(self, *args, **kw):
        seen.update(args=args, kw=kw)
        return "done"

    monkeypatch.setattr(planes.CudaPlaneCopier, name, fake)  # instrument() wraps this stand-in
    profile_layerwise.instrument()
    try:
        params = list(inspect.signature(real).parameters.values())[1:]  # after self
        args = [object() for p in params if p.default is inspect.Parameter.empty]
        kw = {p.name: True for p in params if p.default is not inspect.Parameter.empty}
        assert kw, f"{name} has keyword parameters to pass on"
        plan = type("Plan", (), {"runs": [], "pairs": [], "__len__": lambda self: 0})()
        args[:2] = [], plan  # (planes, plan, to_pool, ...): the wrappers count both
        assert getattr(planes.CudaPlaneCopier, name)(object(), *args, **kw) == "done"
        assert seen["kw"] == kw  # e.g. whole=True reached the copier
    finally:
        profile_layerwise.undo()
    assert getattr(planes.CudaPlaneCopier, name) is fake


def test_undo_puts_back_everything_instrument_replaced():
    before = (planes.CudaPlaneCopier.submit, planes.CudaPlaneCopier._direct, planes.row_groups)
    profile_layerwise.instrument()
    assert planes.CudaPlaneCopier.submit is not before[0] and profile_layerwise.PATCHED
    profile_layerwise.undo()
    assert (planes.CudaPlaneCopier.submit, planes.CudaPlaneCopier._direct, planes.row_groups) == before
    assert not profile_layerwise.PATCHED
