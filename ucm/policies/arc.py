"""Adaptive Replacement Cache (Megiddo & Modha, FAST 2003).

Four LRU lists: ``T1`` (cached, seen once), ``T2`` (cached, seen at least twice) and their
ghosts ``B1``/``B2`` (recently evicted keys, no data). The target size ``p`` of ``T1`` is a
float that adapts on ghost hits: a hit in ``B1`` raises it by ``max(|B2|/|B1|, 1)``, a hit in
``B2`` lowers it by ``max(|B1|/|B2|, 1)`` (clamped to ``[0, capacity]``).

Semantics (identical to libCacheSim's ``ARC.c`` with unit-size keys):
- hit in ``T1`` moves the key to the MRU end of ``T2``; hit in ``T2`` moves it to that end;
- a miss that is a ghost hit adapts ``p``, drops the ghost entry and inserts into ``T2``; the
  eviction it needs (when full) is REPLACE: take the LRU of ``T1`` into ``B1`` if ``T1`` is
  non-empty and ``|T1| > p`` (or ``|T1| == p`` and the key was in ``B2``), or if ``T2`` is
  empty; otherwise the LRU of ``T2`` into ``B2``;
- a miss on all four lists inserts into ``T1``; its eviction (case IV of the paper): when
  ``|T1| + |B1| >= c``, drop the LRU of ``B1`` and REPLACE (or, when ``B1`` is empty, evict the
  LRU of ``T1`` without a ghost); otherwise, when the four lists hold ``>= 2c`` keys, drop the
  LRU of ``B2``, then REPLACE.
The tier calls ``evict(incoming=key)`` before ``insert(key)``: ghost bookkeeping for
``incoming`` is done by whichever comes first, exactly once per miss.
Every list is an ``OrderedDict`` (LRU first): every operation is O(1).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from ucm.policies.base import _NOTHING, EvictionPolicy, Key

_NONE = object()


def _first(od: OrderedDict, protected: Container) -> Optional[Key]:
    for key in od:
        if key not in protected:
            return key
    return None


class ARCPolicy(EvictionPolicy):
    name = "arc"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.t1: OrderedDict[Key, None] = OrderedDict()
        self.t2: OrderedDict[Key, None] = OrderedDict()
        self.b1: OrderedDict[Key, None] = OrderedDict()
        self.b2: OrderedDict[Key, None] = OrderedDict()
        self.p = 0.0
        self._pending = _NONE  # the missed key whose ghost lookup is done
        self._ghost = 0        # 0: not a ghost hit, 1: was in B1, 2: was in B2

    def _miss(self, key: Key) -> None:
        if self._pending is not _NONE and self._pending == key:
            return
        self._pending = key
        b1, b2 = self.b1, self.b2
        if key in b1:
            self.p = min(self.p + max(len(b2) / len(b1), 1.0), float(self.capacity))
            del b1[key]
            self._ghost = 1
        elif key in b2:
            self.p = max(self.p - max(len(b1) / len(b2), 1.0), 0.0)
            del b2[key]
            self._ghost = 2
        else:
            self._ghost = 0

    def insert(self, key: Key) -> None:
        if key in self.t1 or key in self.t2:
            self.touch(key)
            return
        self._miss(key)
        if self._ghost:
            self.t2[key] = None
        else:
            self.t1[key] = None
        self._pending = _NONE
        self._ghost = 0

    def touch(self, key: Key) -> None:
        if key in self.t1:
            del self.t1[key]
            self.t2[key] = None
        elif key in self.t2:
            self.t2.move_to_end(key)

    def remove(self, key: Key) -> None:
        for od in (self.t1, self.t2, self.b1, self.b2):
            if key in od:
                del od[key]
        if self._pending is not _NONE and self._pending == key:
            self._pending = _NONE
            self._ghost = 0

    def _replace(self, in_b2: bool, protected: Container) -> Optional[Key]:
        t1, t2 = self.t1, self.t2
        n1 = len(t1)
        if (n1 and (n1 > self.p or (n1 == self.p and in_b2))) or not t2:
            key = _first(t1, protected)
            if key is not None:
                del t1[key]
                self.b1[key] = None
                return key
        key = _first(t2, protected)
        if key is not None:
            del t2[key]
            self.b2[key] = None
            return key
        key = _first(t1, protected)  # T2 is all protected: fall back to T1
        if key is not None:
            del t1[key]
            self.b1[key] = None
        return key

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        if not (self.t1 or self.t2):
            return None
        if incoming is not None and incoming not in self.t1 and incoming not in self.t2:
            self._miss(incoming)
            ghost = self._ghost
        else:
            ghost = 0
        if ghost:
            return self._replace(ghost == 2, protected)
        c = self.capacity
        if len(self.t1) + len(self.b1) + 1 > c:
            if self.b1:
                self.b1.popitem(last=False)
                return self._replace(False, protected)
            key = _first(self.t1, protected)
            if key is not None:
                del self.t1[key]
                return key
            return self._replace(False, protected)
        if len(self.t1) + len(self.b1) + len(self.t2) + len(self.b2) >= 2 * c and self.b2:
            self.b2.popitem(last=False)
        return self._replace(False, protected)

    def peek_victim(self, protected: Container = _NOTHING) -> Optional[Key]:
        n1 = len(self.t1)
        if (n1 and n1 > self.p) or not self.t2:
            return _first(self.t1, protected)
        return _first(self.t2, protected)

    def __contains__(self, key: object) -> bool:
        return key in self.t1 or key in self.t2

    def __len__(self) -> int:
        return len(self.t1) + len(self.t2)
