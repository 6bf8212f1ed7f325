"""Reuse-threshold admission: a block enters on its ``threshold``-th sighting.

``record(key)`` counts a sighting in a bounded tracker, a ``cachetools.LRUCache`` of at most
``max_tracked`` keys (the least recently seen key is forgotten first, so a key that is not
seen again for a long time starts over). ``admit(key)`` is true once the key was seen
``threshold`` times (default 2: one-hit wonders never enter). ``victim`` is ignored.
record and admit are O(1).
"""
from __future__ import annotations

from typing import Optional

from cachetools import LRUCache

from ucm.policies.base import AdmissionPolicy, Key


class ReuseAdmission(AdmissionPolicy):
    name = "reuse"

    def __init__(self, threshold: int = 2, max_tracked: int = 1 << 20):
        if threshold < 1 or max_tracked < 1:
            raise ValueError("reuse admission: threshold and max_tracked must be >= 1")
        self.threshold = threshold
        self.seen: LRUCache = LRUCache(maxsize=max_tracked)

    def record(self, key: Key) -> None:
        seen = self.seen
        seen[key] = seen.get(key, 0) + 1

    def admit(self, key: Key, victim: Optional[Key] = None) -> bool:
        return self.seen.get(key, 0) >= self.threshold
