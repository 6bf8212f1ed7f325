"""ChainARC: ARC made aware of KV-cache prefix chains (ucm's own policy).

In a KV cache a block is only useful if every block before it in the request is cached too:
lookup stops at the first miss. A request touches its blocks first to last, so plain ARC (like
LRU) leaves a chain's *head* as its least recent block and evicts it first, which makes the
rest of the chain dead weight. ChainARC keeps ARC's lists and adaptation (``ucm.policies.arc``)
and changes only the order inside them, once per request:

- tail first: at the end of a request its blocks are re-ordered so that the first block is the
  most recent and the last the least recent (in ``T1`` and ``T2`` alike); under pressure a chain
  is cut from its tail, and what stays is still a usable prefix;
- cold last block (``cold_last``, off by default): the request's last block goes to the LRU end
  of ``T1``. This helps only where partial last blocks are stored, as in a plain replay of the
  Mooncake traces (their partial last blocks are reused < 1 % of the time). vLLM hashes only
  full blocks, and with partial blocks skipped (``skip_partial=true`` in the simulator) it hurts,
  so it is off.

Request boundaries come from ``begin_sequence()``, which a caller (the simulator; a tier's
lookup) calls before each request's lookups. A caller that never calls it gets plain ARC: the
policy only starts buffering after the first call. The buffer of one request is bounded by
``max_sequence`` keys (longer requests are flushed early). Extra cost: O(blocks of the request)
once per request, i.e. O(1) amortised per operation.
"""
from __future__ import annotations

from collections.abc import Container
from typing import Optional

from ucm.policies.arc import ARCPolicy
from ucm.policies.base import _NOTHING, Key


class ChainARCPolicy(ARCPolicy):
    name = "chainarc"

    def __init__(self, capacity: int, tail_first: bool = True, cold_last: bool = False, max_sequence: int = 4096):
        super().__init__(capacity)
        if max_sequence < 1:
            raise ValueError("chainarc: max_sequence must be >= 1")
        self.tail_first = tail_first
        self.cold_last = cold_last
        self.max_sequence = max_sequence
        self._seq: Optional[list] = None  # None until the first begin_sequence()

    def begin_sequence(self) -> None:
        """A new request starts: re-order the blocks of the previous one."""
        seq = self._seq
        if seq:
            self._flush(seq, last=True)
        self._seq = []

    def _flush(self, seq: list, last: bool) -> None:
        t1, t2 = self.t1, self.t2
        if self.tail_first and len(seq) > 1:  # one key was just made most recent: nothing to do
            for key in reversed(seq):
                if key in t2:
                    t2.move_to_end(key)
                elif key in t1:
                    t1.move_to_end(key)
        if last and self.cold_last:
            key = seq[-1]
            if key in t1:
                t1.move_to_end(key, last=False)
        seq.clear()

    def _note(self, key: Key) -> None:
        seq = self._seq
        if seq is not None:
            seq.append(key)
            if len(seq) >= self.max_sequence:
                self._flush(seq, last=False)

    def insert(self, key: Key) -> None:
        super().insert(key)
        self._note(key)

    def touch(self, key: Key) -> None:
        if key in self.t1 or key in self.t2:
            super().touch(key)
            self._note(key)

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        return super().evict(protected, incoming)

    def replay_requests(self, keys, starts, flags, r0: int, r1: int) -> None:
        """Simulator fast path, same result as the tier protocol with ``begin_sequence()`` before
        each request: replays requests ``r0..r1-1`` (raw mode), setting ``flags[i] = 1`` on hits."""
        if self._seq:
            self._flush(self._seq, last=True)
        t1, t2 = self.t1, self.t2
        cap = self.capacity
        evict = self.evict
        arc_insert = ARCPolicy.insert
        tail_first, cold_last, most = self.tail_first, self.cold_last, self.max_sequence
        for r in range(r0, r1):
            s, e = starts[r], starts[r + 1]
            seg = s  # first key of the part not yet re-ordered (flushed every ``most`` keys)
            for i in range(s, e):
                k = keys[i]
                if k in t1:
                    del t1[k]
                    t2[k] = None
                    flags[i] = 1
                elif k in t2:
                    t2.move_to_end(k)
                    flags[i] = 1
                else:
                    while len(t1) + len(t2) >= cap:
                        if evict(incoming=k) is None:
                            break
                    arc_insert(self, k)
                if i + 1 - seg >= most:
                    self._reorder(keys, seg, i + 1, tail_first)
                    seg = i + 1
            if seg < e:
                self._reorder(keys, seg, e, tail_first)
                if cold_last:
                    k = keys[e - 1]
                    if k in t1:
                        t1.move_to_end(k, last=False)
        self._seq = []

    def _reorder(self, keys, s: int, e: int, tail_first: bool) -> None:
        if not tail_first or e - s <= 1:
            return
        t1, t2 = self.t1, self.t2
        for i in range(e - 1, s - 1, -1):
            k = keys[i]
            if k in t2:
                t2.move_to_end(k)
            elif k in t1:
                t1.move_to_end(k)
