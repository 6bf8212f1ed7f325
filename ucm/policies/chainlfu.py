"""ChainLFU: LFU with dynamic aging, reuse history, and prefix-chain order (ucm's own policy).

A block's priority is ``H = L + n``. Here ``n`` counts its sightings, and it is remembered for a
while after eviction. A first sighting (an insert with no remembered count) weighs
``new_weight`` (default 0.5) of a later one. Counts are kept in half units: 2 per sighting,
``round(2 * new_weight)`` for a first one. ``L`` is the priority of the last evicted block
(dynamic aging, as in LFU-DA / GDSF with unit sizes), so blocks that stop being used sink below
new ones instead of staying forever. ``evict`` takes the lowest priority; ties go to the least
recently ordered block.

Why for KV caches: every request that reaches a block also reaches all blocks before it. So
along a chain the counts never grow with depth, and chains are cut from the tail. A session
that keeps coming back (many turns, or a popular document) builds up counts, and counts of
recently evicted blocks are remembered (``history`` × capacity keys, a
``cachetools.LRUCache``). So a chain that comes back soon after eviction resumes its count
instead of starting at 1.

Prefix order: after each request (``begin_sequence()``, as in ``chainarc``) its blocks are
re-ordered tail first (the first block most recent) and their priorities refreshed with the
current ``L``. A caller that never calls ``begin_sequence()`` gets plain LFU-DA with history.

Structure: a dict of priority buckets (``OrderedDict`` each, oldest first) and the lowest
non-empty priority. Priorities are integers, and no block ever gets a priority below the
current lowest, so the lowest only moves up. Finding it again after a bucket empties scans
upward over at most the total growth of ``L``, which is bounded by the number of operations:
O(1) amortised. (When the lowest keys are protected, ``evict`` walks the buckets in priority
order instead, which costs more; a tier protects only the few blocks a copy is reading.)
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from cachetools import LRUCache

from ucm.policies.base import _NOTHING, EvictionPolicy, Key


class ChainLFUPolicy(EvictionPolicy):
    name = "chainlfu"

    def __init__(self, capacity: int, history: float = 4.0, new_weight: float = 0.5, tail_first: bool = True,
                 max_sequence: int = 4096):
        super().__init__(capacity)
        if history < 0 or max_sequence < 1 or new_weight < 0:
            raise ValueError("chainlfu: need history >= 0, new_weight >= 0 and max_sequence >= 1")
        self._step = 2                        # half units: a sighting adds 2
        self._first = round(2 * new_weight)   # a first sighting adds this
        self.tail_first = tail_first
        self.max_sequence = max_sequence
        self.L = 0
        self._count: dict[Key, int] = {}
        self._prio: dict[Key, int] = {}
        self._buckets: dict[int, OrderedDict] = {}
        self._min = 0
        self._hist = LRUCache(maxsize=max(1, int(history * capacity))) if history > 0 else None
        self._seq: Optional[list] = None

    # -- buckets -----------------------------------------------------------------------------
    def _place(self, key: Key, prio: int) -> None:
        old = self._prio.get(key)
        buckets = self._buckets
        if old is not None:
            b = buckets[old]
            del b[key]
            if not b:
                del buckets[old]
        b = buckets.get(prio)
        if b is None:
            b = buckets[prio] = OrderedDict()
        b[key] = None
        self._prio[key] = prio
        if prio < self._min or len(self._prio) == 1:
            self._min = prio

    def _lowest(self) -> Optional[int]:
        buckets = self._buckets
        if not buckets:
            return None
        m = self._min
        while m not in buckets:
            m += 1
        self._min = m
        return m

    # -- policy ------------------------------------------------------------------------------
    def insert(self, key: Key) -> None:
        if key in self._prio:
            self.touch(key)
            return
        h = self._hist.pop(key, None) if self._hist is not None else None
        n = self._first if h is None else self._step + h
        self._count[key] = n
        self._place(key, self.L + n)
        self._note(key)

    def touch(self, key: Key) -> None:
        n = self._count.get(key)
        if n is None:
            return
        n += self._step
        self._count[key] = n
        self._place(key, self.L + n)
        self._note(key)

    def _forget(self, key: Key, prio: int) -> None:
        b = self._buckets[prio]
        del b[key]
        if not b:
            del self._buckets[prio]
        del self._prio[key]
        n = self._count.pop(key)
        if self._hist is not None:
            self._hist[key] = n

    def remove(self, key: Key) -> None:
        prio = self._prio.get(key)
        if prio is not None:
            self._forget(key, prio)
            if self._hist is not None:
                self._hist.pop(key, None)

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        m = self._lowest()
        if m is None:
            return None
        if not protected:
            key = next(iter(self._buckets[m]))
        else:
            key = None
            for p in sorted(self._buckets):  # rare: only when the lowest keys are protected
                for k in self._buckets[p]:
                    if k not in protected:
                        key, m = k, p
                        break
                if key is not None:
                    break
            if key is None:
                return None
        self._forget(key, m)
        if m > self.L:
            self.L = m
        return key

    def peek_victim(self, protected: Container = _NOTHING) -> Optional[Key]:
        m = self._lowest()
        if m is None:
            return None
        for k in self._buckets[m]:
            if k not in protected:
                return k
        return None

    # -- prefix order --------------------------------------------------------------------------
    def begin_sequence(self) -> None:
        seq = self._seq
        if seq:
            self._flush(seq)
        self._seq = []

    def _note(self, key: Key) -> None:
        seq = self._seq
        if seq is not None:
            seq.append(key)
            if len(seq) >= self.max_sequence:
                self._flush(seq)

    def value(self, n: int) -> int:
        """The priority above ``L`` of a block with ``n`` half-unit sightings (here ``n`` itself;
        subclasses reshape it)."""
        return n

    def _flush(self, seq: list) -> None:
        if self.tail_first and len(seq) > 1:  # one key was just placed last: nothing to do
            count, L, value = self._count, self.L, self.value
            for key in reversed(seq):
                n = count.get(key)
                if n is not None:
                    self._place(key, L + value(n))
        seq.clear()

    def replay_requests(self, keys, starts, flags, r0: int, r1: int) -> None:
        """Simulator fast path, same result as the tier protocol with ``begin_sequence()`` before
        each request: replays requests ``r0..r1-1`` (raw mode), setting ``flags[i] = 1`` on hits."""
        if self._seq:
            self._flush(self._seq)
        prio, count, buckets = self._prio, self._count, self._buckets
        hist = self._hist
        hist_pop = hist.pop if hist is not None else None
        step, first = self._step, self._first
        cap = self.capacity
        most = self.max_sequence
        flush = self._flush
        new_bucket = OrderedDict
        seg: list = []
        for r in range(r0, r1):
            s, e = starts[r], starts[r + 1]
            multi = e - s > 1
            for i in range(s, e):
                k = keys[i]
                old = prio.get(k)
                if old is not None:
                    n = count[k] + step
                    flags[i] = 1
                    b = buckets[old]
                    del b[k]
                    if not b:
                        del buckets[old]
                else:
                    if len(prio) >= cap:  # evict the lowest priority, oldest first
                        m = self._min
                        while m not in buckets:
                            m += 1
                        b = buckets[m]
                        victim, _ = b.popitem(last=False)
                        if not b:
                            del buckets[m]
                        self._min = m
                        del prio[victim]
                        nv = count.pop(victim)
                        if hist is not None:
                            hist[victim] = nv
                        if m > self.L:
                            self.L = m
                    h = hist_pop(k, None) if hist_pop is not None else None
                    n = first if h is None else step + h
                count[k] = n
                new = self.L + n
                b = buckets.get(new)
                if b is None:
                    b = buckets[new] = new_bucket()
                b[k] = None
                prio[k] = new
                if new < self._min or len(prio) == 1:
                    self._min = new
                if multi:
                    seg.append(k)
                    if len(seg) >= most:
                        flush(seg)
            if seg:
                flush(seg)
        self._seq = []

    def __contains__(self, key: object) -> bool:
        return key in self._prio

    def __len__(self) -> int:
        return len(self._prio)

    def priority(self, key: Key) -> Optional[int]:
        return self._prio.get(key)
