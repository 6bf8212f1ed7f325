"""S3-FIFO eviction (Yang et al., SOSP 2023), as libCacheSim's ``S3FIFO.c``.

Three FIFO queues: ``small`` (``small_size_ratio`` of the capacity, default 10 %), ``main``
(the rest) and ``ghost`` (keys only, ``ghost_size_ratio`` of the capacity, default 90 %).
Each cached key has a small counter, set to 0 on insert and raised by 1 on every hit.
- A miss inserts into ``small``, or into ``main`` if the key was in ``ghost`` (and leaves
  the ghost). Before the first eviction ever, once ``small`` is full, misses go to ``main``.
- ``evict``: if ``main`` is over its size or ``small`` is empty, evict from ``main``, else
  from ``small``.
- Evicting from ``small``: the oldest key leaves; if its counter is
  ``>= move_to_main_threshold`` (default 2) it moves to ``main`` with the counter reset to 0
  and the next oldest is tried; otherwise it is evicted into ``ghost`` (the ghost forgets its
  oldest key when full).
- Evicting from ``main`` (a CLOCK with a 2-bit counter): the oldest key with counter ``>= 1`` is
  reinserted at the tail with ``min(counter, 3) - 1``; the first with counter 0 is evicted.
Every operation is O(1) amortised (each reinsertion spends a hit).

One known difference: below 20 blocks of capacity the small queue holds 0 or 1 block.
libCacheSim 0.3.5 then fails at init (small queue 0) or refuses every insert that would fill
the small queue (0 hits); we insert anyway, since a cache must take blocks. From 20 blocks up
the two agree (tested from 50 up; 20, 25 and 40 checked by hand on a Zipf stream).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from ucm.policies.base import _NOTHING, EvictionPolicy, Key

_NONE = object()


class S3FIFOPolicy(EvictionPolicy):
    name = "s3fifo"

    def __init__(self, capacity: int, small_size_ratio: float = 0.1, ghost_size_ratio: float = 0.9,
                 move_to_main_threshold: int = 2):
        super().__init__(capacity)
        if not 0.0 <= small_size_ratio < 1.0 or ghost_size_ratio < 0.0 or move_to_main_threshold < 1:
            raise ValueError("s3fifo: need 0 <= small_size_ratio < 1, ghost_size_ratio >= 0, "
                             "move_to_main_threshold >= 1")
        self.small_size = int(capacity * small_size_ratio)
        self.main_size = capacity - self.small_size
        self.ghost_size = int(capacity * ghost_size_ratio)
        self.threshold = move_to_main_threshold
        self.small: OrderedDict[Key, int] = OrderedDict()
        self.main: OrderedDict[Key, int] = OrderedDict()
        self.ghost: OrderedDict[Key, None] = OrderedDict()
        self._has_evicted = False
        self._pending = _NONE
        self._ghost_hit = False

    def _miss(self, key: Key) -> None:
        if self._pending is not _NONE and self._pending == key:
            return
        self._pending = key
        self._ghost_hit = self.ghost.pop(key, _NONE) is not _NONE

    def insert(self, key: Key) -> None:
        if key in self.small or key in self.main:
            self.touch(key)
            return
        self._miss(key)
        if self._ghost_hit or (not self._has_evicted and len(self.small) >= self.small_size):
            self.main[key] = 0
        else:
            self.small[key] = 0
        self._pending = _NONE
        self._ghost_hit = False

    def touch(self, key: Key) -> None:
        small = self.small
        if key in small:
            small[key] += 1
        elif key in self.main:
            self.main[key] += 1

    def remove(self, key: Key) -> None:
        self.small.pop(key, None)
        self.main.pop(key, None)
        self.ghost.pop(key, None)
        if self._pending is not _NONE and self._pending == key:
            self._pending = _NONE
            self._ghost_hit = False

    def _evict_small(self, protected: Container) -> Optional[Key]:
        small, main, ghost = self.small, self.main, self.ghost
        budget = len(small)
        while small and budget:
            budget -= 1
            key, freq = small.popitem(last=False)
            if key in protected:
                small[key] = freq
                continue
            if freq >= self.threshold:
                main[key] = 0
                continue
            if self.ghost_size > 0:
                ghost[key] = None
                if len(ghost) > self.ghost_size:
                    ghost.popitem(last=False)
            return key
        return None

    def _evict_main(self, protected: Container) -> Optional[Key]:
        main = self.main
        budget = 4 * len(main) + 1
        while main and budget:
            budget -= 1
            key, freq = main.popitem(last=False)
            if key in protected:
                main[key] = freq
                continue
            if freq >= 1:
                main[key] = (freq if freq < 3 else 3) - 1
                continue
            return key
        return None

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        if incoming is not None and incoming not in self.small and incoming not in self.main:
            self._miss(incoming)
        self._has_evicted = True
        if len(self.main) > self.main_size or not self.small:
            key = self._evict_main(protected)
            if key is None:
                key = self._evict_small(protected)
        else:
            key = self._evict_small(protected)
            if key is None:
                key = self._evict_main(protected)
        return key

    def peek_victim(self, protected: Container = _NOTHING) -> Optional[Key]:
        """An approximation of the next victim: the oldest unprotected key of the queue that
        ``evict`` would start from (reinsertions may pick another)."""
        if len(self.main) > self.main_size or not self.small:
            order = (self.main, self.small)
        else:
            order = (self.small, self.main)
        for od in order:
            for key in od:
                if key not in protected:
                    return key
        return None

    def __contains__(self, key: object) -> bool:
        return key in self.small or key in self.main

    def __len__(self) -> int:
        return len(self.small) + len(self.main)
