"""Raw replay with admission ``always`` against libCacheSim (the outside reference).

LRU, LFU, ARC and SIEVE must give EQUAL hit counts; S3-FIFO (libCacheSim's ``S3FIFO.c``
defaults: small 10 %, ghost 90 %, threshold 2) within 0.5 % absolute hit ratio (in practice
it is equal too). Full Mooncake traces when ``../shared/traces`` exists (skipped otherwise, with
the reason), shipped fixture heads and seeded Zipf streams always.
"""
from __future__ import annotations

import pytest

from tests.policies.conftest import FIXTURES, MOONCAKE, fixture_keys, lcs_hits, mooncake_keys, ucm_hits, zipf_stream

pytest.importorskip("libcachesim", reason="libcachesim (test-only reference) is not installed")

EXACT = ["lru", "lfu", "arc", "sieve"]
ALL = EXACT + ["s3fifo"]


def check(name: str, cap: int, keys: list) -> None:
    ours = ucm_hits(name, cap, keys)
    ref = lcs_hits(name, cap, keys)
    if name in EXACT:
        assert ours == ref, f"{name} capacity {cap}: ucm {ours} hits, libCacheSim {ref}"
    else:
        assert abs(ours - ref) / len(keys) <= 0.005, f"{name} capacity {cap}: ucm {ours}, libCacheSim {ref}"


@pytest.mark.parametrize("trace", MOONCAKE)
@pytest.mark.parametrize("name", ALL)
def test_full_mooncake_trace(name, trace):
    keys = mooncake_keys(trace)
    distinct = len(set(keys))
    for frac in (0.01, 0.05, 0.10, 0.30):
        check(name, max(50, int(distinct * frac)), keys)


@pytest.mark.parametrize("alpha", [0.6, 0.9, 1.2])
@pytest.mark.parametrize("name", ALL)
def test_zipf(name, alpha):
    keys = zipf_stream(100_000, 20_000, alpha, seed=7)
    for cap in (50, 500, 2_000, 8_000):
        check(name, cap, keys)


@pytest.mark.parametrize("trace", FIXTURES)
@pytest.mark.parametrize("name", ALL)
def test_fixture_heads(name, trace):
    keys = fixture_keys(trace)
    # the heads have little reuse: replay them three times so eviction order matters
    keys = keys * 3
    for cap in (100, 1_000, 5_000):
        check(name, cap, keys)
