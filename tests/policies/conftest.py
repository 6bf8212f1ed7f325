"""Fixtures of the policy tests: traces (shipped fixtures, the real Mooncake traces when
``../shared/traces`` exists, seeded Zipf streams) and the two replays compared.

libCacheSim (GPL, PyPI ``libcachesim``) is a test-only reference: ``ucm`` never imports it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ucm.policies import make_eviction
from ucm.sim.synth import zipf_keys

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SHARED_TRACES = Path(os.environ.get("UCM_TRACES", REPO.parent / "shared" / "traces"))
MOONCAKE = ["conversation_trace.jsonl", "synthetic_trace.jsonl"]
FIXTURES = ["conversation_head400.jsonl", "synthetic_head300.jsonl"]


def read_keys(path: Path) -> list:
    keys = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                keys.extend(json.loads(line)["hash_ids"])
    return keys


_CACHE: dict = {}


def mooncake_keys(name: str) -> list:
    path = SHARED_TRACES / name
    if not path.is_file():
        pytest.skip(f"real Mooncake trace {path} is absent (shared traces folder not found; "
                    f"set UCM_TRACES=<folder> to run the full-trace checks)")
    if name not in _CACHE:
        _CACHE[name] = read_keys(path)
    return _CACHE[name]


def fixture_keys(name: str) -> list:
    if name not in _CACHE:
        _CACHE[name] = read_keys(DATA / name)
    return _CACHE[name]


def zipf_stream(n: int, objects: int, alpha: float, seed: int) -> list:
    k = ("zipf", n, objects, alpha, seed)
    if k not in _CACHE:
        _CACHE[k] = zipf_keys(n, objects, alpha, seed)
    return _CACHE[k]


def ucm_hits(name: str, capacity: int, keys, **params) -> int:
    """Drive a ucm policy exactly as a tier does: touch on a hit, evict while full then insert."""
    p = make_eviction(name, capacity, **params)
    hits = 0
    for k in keys:
        if k in p:
            p.touch(k)
            hits += 1
        else:
            while len(p) >= capacity:
                assert p.evict(incoming=k) is not None
            p.insert(k)
        assert len(p) <= capacity
    return hits


def lcs_hits(name: str, capacity: int, keys) -> int:
    lcs = pytest.importorskip("libcachesim", reason="libcachesim (test-only reference) is not installed")
    cls = {"lru": lcs.LRU, "lfu": lcs.LFU, "arc": lcs.ARC, "sieve": lcs.Sieve, "s3fifo": lcs.S3FIFO}[name]
    cache = cls(capacity, hashpower=16)  # the default 2**24 buckets cost more than the replay
    req = lcs.Request()
    req.obj_size = 1
    get = cache.get
    hits = 0
    for k in keys:
        req.obj_id = k
        if get(req):
            hits += 1
    return hits
