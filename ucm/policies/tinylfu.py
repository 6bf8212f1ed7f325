"""TinyLFU admission (Einziger, Friedman & Manes, ACM ToS 2017).

A frequency estimate of recent history guards the cache: a missed block enters only if it
is estimated to be more popular than the block it would displace.

- Doorkeeper: a plain ``set`` of keys seen once since the last reset (exact, so no false
  positives). A key's first sighting only enters the doorkeeper; later sightings count in the
  sketch. Estimate = sketch + (1 if in the doorkeeper).
- Count-min sketch: ``depth`` rows (default 4) of ``width`` 4-bit counters (saturate at 15),
  index ``i`` of a key from a 64-bit mix of ``hash(key)``; the estimate is the row minimum.
- Aging: after ``sample_factor * width`` recorded sightings every counter is halved (one C-level
  ``bytes.translate`` per row) and the doorkeeper is cleared: amortised O(1).
- ``admit(key, victim)``: with a victim, ``estimate(key) > estimate(victim)``; without one (the
  cache has room, or its policy cannot name a victim) ``estimate(key) >= min_count``
  (default 2: a key seen before in the current aging window; the tiers call ``admit(key)``
  without a victim).
"""
from __future__ import annotations

from typing import Optional

from ucm.policies.base import AdmissionPolicy, Key

_HALF = bytes(i >> 1 for i in range(256))
_M64 = (1 << 64) - 1
_MUL = 0x9E3779B97F4A7C15


class TinyLFUAdmission(AdmissionPolicy):
    name = "tinylfu"

    def __init__(self, width: int = 1 << 16, depth: int = 4, sample_factor: int = 10, min_count: int = 2):
        if width < 16 or depth < 1 or depth > 4 or sample_factor < 1:
            raise ValueError("tinylfu: need width >= 16, 1 <= depth <= 4, sample_factor >= 1")
        w = 1
        while w < width:
            w <<= 1
        self.width = w
        self.depth = depth
        self._mask = w - 1
        self._rows = [bytearray(w) for _ in range(depth)]
        self._door: set = set()
        self._sample = sample_factor * w
        self._added = 0
        self.min_count = min_count
        self.resets = 0
        self._shifts = tuple(16 * i for i in range(depth))

    def _indexes(self, key: Key) -> list:
        h = (hash(key) * _MUL) & _M64
        h ^= h >> 29
        h = (h * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 32
        m = self._mask
        # four 16-bit lanes (each mixed with a shifted copy) give the row indexes
        return [((h >> s) ^ (h >> (s + 7))) & m for s in self._shifts]

    def estimate(self, key: Key) -> int:
        rows = self._rows
        if self.depth == 4:  # _indexes unrolled (the simulator calls this twice per miss)
            h = (hash(key) * _MUL) & _M64
            h ^= h >> 29
            h = (h * 0xBF58476D1CE4E5B9) & _M64
            h ^= h >> 32
            m = self._mask
            r0, r1, r2, r3 = rows
            est = min(r0[(h ^ (h >> 7)) & m], r1[((h >> 16) ^ (h >> 23)) & m],
                      r2[((h >> 32) ^ (h >> 39)) & m], r3[((h >> 48) ^ (h >> 55)) & m])
        else:
            est = min([rows[i][j] for i, j in enumerate(self._indexes(key))])
        return est + 1 if key in self._door else est

    def record(self, key: Key) -> None:
        door = self._door
        if key not in door:
            door.add(key)
        elif self.depth == 4:  # _indexes unrolled: every sighting comes through here
            h = (hash(key) * _MUL) & _M64
            h ^= h >> 29
            h = (h * 0xBF58476D1CE4E5B9) & _M64
            h ^= h >> 32
            m = self._mask
            r0, r1, r2, r3 = self._rows
            j = (h ^ (h >> 7)) & m
            if r0[j] < 15:
                r0[j] += 1
            j = ((h >> 16) ^ (h >> 23)) & m
            if r1[j] < 15:
                r1[j] += 1
            j = ((h >> 32) ^ (h >> 39)) & m
            if r2[j] < 15:
                r2[j] += 1
            j = ((h >> 48) ^ (h >> 55)) & m
            if r3[j] < 15:
                r3[j] += 1
        else:
            rows = self._rows
            i = 0
            for j in self._indexes(key):
                row = rows[i]
                if row[j] < 15:
                    row[j] += 1
                i += 1
        self._added += 1
        if self._added >= self._sample:
            self._age()

    def _age(self) -> None:
        self._rows = [bytearray(row.translate(_HALF)) for row in self._rows]
        self._door.clear()
        self._added //= 2
        self.resets += 1

    def admit(self, key: Key, victim: Optional[Key] = None) -> bool:
        if victim is None:
            return self.estimate(key) >= self.min_count
        return self.estimate(key) > self.estimate(victim)
