"""PrefixLFU: ChainLFU with a concave (log) count value and a prefix-aware first sighting.

Same machinery as ``chainlfu`` (``ucm/policies/chainlfu.py``): LFU with dynamic aging, counts
remembered after eviction (``history`` × capacity keys), tail-first order per request. Counts
are kept in half units (2 per sighting). Two rules differ:

- **Value is the logarithm of the count.** A cached block's priority is
  ``H = L + v(n)`` with ``v(n) = round(scale * ln(1 + n / 2))`` (``n`` in half units, so
  ``n / 2`` is the number of sightings). ``L`` is the priority of the last evicted block
  (dynamic aging). With a linear value (``chainlfu``) a block seen 20 times outranks fresh
  blocks for 20 "generations" of aging; with ``log`` it stays ahead for about ``ln 21 ≈ 3``,
  which is closer to LRU for blocks that stopped being used, while one or two extra sightings
  still lift a block clearly above the blocks seen once.
- **A first sighting weighs what the request tells about it.** Within one request
  (between two ``begin_sequence()`` calls), the blocks inserted after a prefix hit of at least
  ``min_hits`` blocks (the request continued a cached chain, and these are its new tail) start
  with ``cont_weight`` sightings (default 0: priority ``L``, the first to go). Blocks inserted
  by a request whose cached prefix was shorter (a new chain, e.g. a new session on a shared
  system prompt of one block) start with ``new_weight`` (default 0.5), as in ``chainlfu``. A
  block with a remembered count always resumes it (``count + 1`` sighting). Without
  ``begin_sequence()`` every first sighting weighs ``new_weight`` (no request context).

Why: in a KV cache every request that reaches a block also reaches all blocks before it, so
counts never grow along a chain, and tail-first order cuts a chain from its tail (see
``chainlfu``). On the Mooncake traces the new tail of a continued chain is seldom the part the
next request extends (documents: the question after a shared document; chat: the last turn,
re-hashed by the next turn), while a new chain's head is as likely to come back as anything.

Ties go to the least recently ordered block. Priorities are integers (``scale`` quantises the
logarithm); no block is ever placed below the current ``L`` and ``v`` is bounded by
``scale * ln(1 + count)``, so finding the lowest bucket again scans upward over at most that
bound plus the growth of ``L``: O(1) amortised, like ``chainlfu``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

from ucm.policies.base import Key
from ucm.policies.chainlfu import ChainLFUPolicy


_TABLE_MAX = 1 << 20
_TABLES: dict = {}


def _v(scale: float, n: int) -> int:
    return int(round(scale * math.log1p(n / 2.0)))


def _table(scale: float) -> list:
    """``v(0..)`` for one ``scale``, shared by every policy with that scale, grown on demand."""
    t = _TABLES.get(scale)
    if t is None:
        t = _TABLES[scale] = [_v(scale, n) for n in range(256)]
    return t


class PrefixLFUPolicy(ChainLFUPolicy):
    name = "prefixlfu"

    def __init__(self, capacity: int, history: float = 4.0, new_weight: float = 0.5, cont_weight: float = 0.0,
                 min_hits: int = 2, scale: float = 16.0, tail_first: bool = True, max_sequence: int = 4096):
        super().__init__(capacity, history=history, new_weight=new_weight, tail_first=tail_first,
                         max_sequence=max_sequence)
        if cont_weight < 0 or min_hits < 0 or scale <= 0:
            raise ValueError("prefixlfu: need cont_weight >= 0, min_hits >= 0 and scale > 0")
        self._new = self._first
        self._cont_first = round(2 * cont_weight)
        self.min_hits = int(min_hits)
        self.scale = float(scale)
        self._vals = _table(self.scale)
        self._hits = 0           # prefix hits of the current request before its first insert
        self._inserting = False  # the current request has inserted a block

    def value(self, n: int) -> int:
        """``v(n)``: the priority above ``L`` of a block with ``n`` half-unit sightings."""
        vals = self._vals
        if n < len(vals):
            return vals[n]
        if n < _TABLE_MAX:  # extend the shared table (amortised O(1): it only grows)
            scale = self.scale
            vals.extend(_v(scale, m) for m in range(len(vals), max(n + 1, 2 * len(vals))))
            return vals[n]
        return _v(self.scale, n)

    # -- policy ------------------------------------------------------------------------------
    def insert(self, key: Key) -> None:
        if key in self._prio:
            self.touch(key)
            return
        if not self._inserting:
            self._inserting = True
            cont = self._seq is not None and self._hits >= self.min_hits
            self._first = self._cont_first if cont else self._new
        h = self._hist.pop(key, None) if self._hist is not None else None
        n = self._first if h is None else self._step + h
        self._count[key] = n
        self._place(key, self.L + self.value(n))
        self._note(key)

    def touch(self, key: Key) -> None:
        n = self._count.get(key)
        if n is None:
            return
        if not self._inserting:
            self._hits += 1
        n += self._step
        self._count[key] = n
        self._place(key, self.L + self.value(n))
        self._note(key)

    def begin_sequence(self) -> None:
        super().begin_sequence()
        self._hits = 0
        self._inserting = False

    def replay_requests(self, keys, starts, flags, r0: int, r1: int) -> None:
        """Simulator fast path, same result as the tier protocol with ``begin_sequence()`` before
        each request: replays requests ``r0..r1-1`` (raw mode), setting ``flags[i] = 1`` on hits."""
        if self._seq:
            self._flush(self._seq)
        prio, count, buckets = self._prio, self._count, self._buckets
        hist = self._hist
        hist_pop = hist.pop if hist is not None else None
        step, new_first, cont_first, mh = self._step, self._new, self._cont_first, self.min_hits
        vals = self._vals
        value = self.value
        cap = self.capacity
        most = self.max_sequence
        flush = self._flush
        new_bucket = OrderedDict
        L, mn = self.L, self._min
        seg: list = []
        for r in range(r0, r1):
            s, e = starts[r], starts[r + 1]
            multi = e - s > 1
            hits = 0
            first = -1  # first-sighting weight of this request, fixed at its first miss
            for i in range(s, e):
                k = keys[i]
                old = prio.get(k)
                if old is not None:
                    n = count[k] + step
                    count[k] = n
                    flags[i] = 1
                    if first < 0:
                        hits += 1
                    try:
                        new = L + vals[n]
                    except IndexError:
                        new = L + value(n)
                    b = buckets[old]
                    if new == old:  # same bucket: only the order within it changes
                        b.move_to_end(k)
                        if multi:
                            seg.append(k)
                            if len(seg) >= most:
                                self.L, self._min = L, mn
                                flush(seg)
                                mn = self._min
                        continue
                    del b[k]
                    if not b:
                        del buckets[old]
                else:
                    if first < 0:
                        first = cont_first if hits >= mh else new_first
                    if len(prio) >= cap:  # evict the lowest priority, oldest first
                        while mn not in buckets:
                            mn += 1
                        b = buckets[mn]
                        victim, _ = b.popitem(last=False)
                        if not b:
                            del buckets[mn]
                        del prio[victim]
                        nv = count.pop(victim)
                        if hist is not None:
                            hist[victim] = nv
                        if mn > L:
                            L = mn
                    h = hist_pop(k, None) if hist_pop is not None else None
                    n = first if h is None else step + h
                    count[k] = n
                    try:
                        new = L + vals[n]
                    except IndexError:
                        new = L + value(n)
                b = buckets.get(new)
                if b is None:
                    b = buckets[new] = new_bucket()
                b[k] = None
                prio[k] = new
                if new < mn or len(prio) == 1:
                    mn = new
                if multi:
                    seg.append(k)
                    if len(seg) >= most:
                        self.L, self._min = L, mn
                        flush(seg)
                        mn = self._min
            if seg:
                self.L, self._min = L, mn
                flush(seg)
                mn = self._min
        self.L, self._min = L, mn
        self._seq = []
        self._hits = 0
        self._inserting = False
        self._first = new_first

    def priority(self, key: Key) -> Optional[int]:
        return self._prio.get(key)
