"""Python's garbage-collector pauses in a timed region, for the benchmarks (``gc.callbacks``)."""
from __future__ import annotations

import gc
import time


class GcClock:
    """Python's garbage-collector pauses, summed per generation: a pass records how long the
    collector stopped this process, the likeliest cause of a 10-20 ms outlier."""

    def __init__(self) -> None:
        self.ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info.get("generation", 2)
            self.ms[g] += 1e3 * (time.perf_counter() - self._t0)
            self.count[g] += 1

    def snapshot(self) -> tuple:
        return list(self.ms), list(self.count)

    def since(self, snap: tuple) -> dict:
        ms0, n0 = snap
        return dict(ms=round(sum(self.ms) - sum(ms0), 3), gen2_ms=round(self.ms[2] - ms0[2], 3),
                    collections=[a - b for a, b in zip(self.count, n0)])
