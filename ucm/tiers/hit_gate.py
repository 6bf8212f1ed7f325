"""Whether blocks found only in a slow tier (disk) are worth loading, or cheaper to recompute.

A disk hit pays off only when the tier delivers KV bytes faster than the model produces them by
recomputing the tokens: on an H200 with a 1.2 GB/s disk a 7B model recomputes ~2.1 GB/s of KV, and
every disk hit was 3-4 x slower than no hit at all (2026-11-29). Both rates are measured where they
happen, in KV bytes a second of this rank: the chain notes each promotion batch it reads from below
(``note_read``), the connector's worker notes prefill steps (``note_compute``).

Modes (``disk.hits``): ``always`` and ``never`` do what they say; ``auto`` lets hits through until
both rates are known, then only while the read rate is at least ``margin`` (1.0) times the compute
rate. Near the break-even the choice matters little (CPU, real vLLM, 2026-11-29, ``bench/disk_gate.py``:
at read / compute rates of 0.06-0.10 / 0.05-0.08 GB/s disk hits took 43-54 ms against 31-37 ms
recomputed, at 0.08 / 0.08 they took 36 against 44 ms, at 0.14 / 0.06 24 against 44 ms); far from it
(the H200's 0.55 against 2.1 GB/s) it decides between a hit 3 x slower than no hit and none. A refused lookup
still lets every ``probe_every``-th one through, so the read rate is measured again (a warm page
cache, a quieter disk) and the gate opens once reading wins.
"""
from __future__ import annotations

import threading
from typing import Optional

MODES = ("auto", "always", "never")


class SlowHitGate:
    def __init__(self, mode: str = "auto", probe_every: int = 16, weight: float = 0.3, margin: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"config key 'disk.hits' must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        self.probe_every = probe_every
        self.weight = weight  # of a new measurement in the moving averages
        self.margin = margin  # how much faster than recomputing reading must be
        self.read_bps: Optional[float] = None
        self.compute_bps: Optional[float] = None
        self.counters = dict(allowed_lookups=0, refused_lookups=0, probes=0)
        self._refused_run = 0
        self._lock = threading.Lock()

    def _avg(self, old: Optional[float], nbytes: int, seconds: float) -> Optional[float]:
        if nbytes <= 0 or seconds <= 0:
            return old
        rate = nbytes / seconds
        return rate if old is None else old + self.weight * (rate - old)

    def note_read(self, nbytes: int, seconds: float) -> None:
        """``nbytes`` of blocks came up from the slow tier in ``seconds`` (wall time, all readers)."""
        with self._lock:
            self.read_bps = self._avg(self.read_bps, nbytes, seconds)

    def note_compute(self, nbytes: int, seconds: float) -> None:
        """A forward computed ``nbytes`` of new KV (its new full blocks) in ``seconds``."""
        with self._lock:
            self.compute_bps = self._avg(self.compute_bps, nbytes, seconds)

    def reading_wins(self) -> bool:
        """The decision without side effects (unknown rates: reading is given the benefit of the doubt)."""
        if self.mode != "auto":
            return self.mode == "always"
        r, c = self.read_bps, self.compute_bps
        return r is None or c is None or r >= self.margin * c

    def allow(self, count: bool = True) -> bool:
        """May a lookup's hit run into blocks held only by the slow tier? ``count``: a request's
        first lookup (refusals count towards the next probe; a repeated ask gets the plain decision)."""
        with self._lock:
            ok = self.reading_wins()
            if not ok and self.mode == "auto" and count:
                self._refused_run += 1
                if self._refused_run >= self.probe_every:
                    self._refused_run = 0
                    self.counters["probes"] += 1
                    ok = True
            if count:
                self.counters["allowed_lookups" if ok else "refused_lookups"] += 1
            return ok

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters, mode=self.mode, read_gbps=None if self.read_bps is None else self.read_bps / 1e9,
                        compute_gbps=None if self.compute_bps is None else self.compute_bps / 1e9)
