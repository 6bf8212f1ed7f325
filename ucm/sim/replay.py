"""Replay a trace against a chain of policy-managed tiers, in raw or prefix mode.

The simulator drives the policies exactly as a tier does (``ucm.policies.base``): on a miss
``admission.admit`` decides, ``evict(incoming=key)`` runs while the tier is full, then
``insert(key)``; a hit calls ``touch``; every sighting calls ``admission.record``.

- ``raw``: every block id is one independent access; a miss inserts. Per access a hit flag is
  kept, so the prefix hit (leading run of hits of each request) is known too.
- ``prefix``: what a KV cache does. A request looks its blocks up in order and stops at the
  first block no tier holds; those leading blocks are hits (read from the fastest tier holding
  them, a lower-tier hit is promoted into the head tier). The rest of the request is recomputed
  and stored: a block already in the head tier is touched, any other is offered to the head
  tier (admission, eviction); blocks evicted from a tier are demoted into the next tier.

Tiers: ``capacities`` lists the capacity in blocks of each tier, fastest first.
``Belady``: the offline optimum (MIN with bypass: on a miss in a full cache, the block among the
cached ones and the incoming one that is next used farthest in the future is dropped); only for
one tier, and in prefix mode with next uses counted in accesses (parents are always next used
before their children, so MIN keeps the cached set prefix-closed).
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

from ucm.policies import make_admission, make_eviction
from ucm.policies.always import AlwaysAdmit
from ucm.policies.lru import LRUPolicy
from ucm.sim.trace import Trace

CHUNK = 1 << 16


@dataclass
class ReplayResult:
    hits: int = 0
    tier_hits: list = field(default_factory=list)
    tier_prefix_blocks: list = field(default_factory=list)  # per tier: prefix-hit blocks it served
    flags: Optional[bytearray] = None  # per access: 0 miss, i+1 hit in tier i
    prefix_blocks: list = field(default_factory=list)  # per request: leading hit blocks
    inserted: list = field(default_factory=list)      # per tier: blocks written
    promoted: int = 0
    demoted: int = 0
    rejected: int = 0


def _peek(policy) -> Optional[object]:
    peek = getattr(policy, "peek_victim", None)
    if peek is not None:
        return peek()
    order = getattr(policy, "_order", None)  # LRUPolicy keeps an OrderedDict, oldest first
    if isinstance(order, OrderedDict) and order:
        return next(iter(order))
    return None


class Chain:
    """Tiers as (eviction, admission) pairs, fastest first."""

    def __init__(self, evictions: list, admissions: list):
        self.ev = evictions
        self.ad = admissions
        self.inserted = [0] * len(evictions)
        self.demoted = 0
        self.promoted = 0
        self.rejected = 0

    @classmethod
    def build(cls, eviction: str, admission: str, capacities: list, eviction_params=None, admission_params=None):
        evs = [make_eviction(eviction, int(c), **dict(eviction_params or {})) for c in capacities]
        ads = [make_admission(admission, **dict(admission_params or {})) for _ in capacities]
        return cls(evs, ads)

    def store(self, level: int, key) -> bool:
        """Offer ``key`` (not cached in tier ``level``) to tier ``level``; victims move down."""
        ev = self.ev[level]
        ad = self.ad[level]
        full = len(ev) >= ev.capacity
        if not isinstance(ad, AlwaysAdmit):
            if not ad.admit(key, _peek(ev) if full else None):
                self.rejected += 1
                if level + 1 < len(self.ev):  # refused blocks fall through to the next tier
                    nxt = self.ev[level + 1]
                    if key in nxt:
                        nxt.touch(key)
                    else:
                        self.store(level + 1, key)
                return False
        while len(ev) >= ev.capacity:
            victim = ev.evict(incoming=key)
            if victim is None:
                return False
            if level + 1 < len(self.ev):
                self.demoted += 1
                nxt = self.ev[level + 1]
                if victim in nxt:
                    nxt.touch(victim)
                else:
                    self.store(level + 1, victim)
        ev.insert(key)
        self.inserted[level] += 1
        return True


def _begin(ev_list):
    hooks = [h for h in (getattr(ev, "begin_sequence", None) for ev in ev_list) if h is not None]
    return hooks


def replay_raw(trace: Trace, chain: Chain, progress: Optional[Callable[[int], None]] = None) -> ReplayResult:
    keys = trace.keys
    n = len(keys)
    flags = bytearray(n)
    head = chain.ev[0]
    hooks = _begin(chain.ev)
    simple = len(chain.ev) == 1 and isinstance(chain.ad[0], AlwaysAdmit) and not hooks
    admitted = len(chain.ev) == 1 and not isinstance(chain.ad[0], AlwaysAdmit) and not hooks
    hooked = len(chain.ev) == 1 and isinstance(chain.ad[0], AlwaysAdmit) and len(hooks) == 1
    fast_requests = getattr(head, "replay_requests", None) if hooked else None
    if fast_requests is not None:
        starts = trace.starts
        for r0 in range(0, trace.n_requests, 4096):
            r1 = min(trace.n_requests, r0 + 4096)
            fast_requests(keys, starts, flags, r0, r1)
            if progress:
                progress(starts[r1] - starts[r0])
        n_done = n
    else:
        n_done = 0
    for lo in range(n_done, n, CHUNK):
        hi = min(n, lo + CHUNK)
        if simple and type(head) is LRUPolicy and isinstance(getattr(head, "_order", None), OrderedDict):
            _raw_lru(head._order, head.capacity, keys, flags, lo, hi)
        elif simple and hasattr(head, "replay_raw"):
            head.replay_raw(keys, flags, lo, hi)
        elif simple:
            _raw_generic(head, keys, flags, lo, hi)
        elif hooked:
            _raw_hooked(head, hooks[0], trace, flags, lo, hi)
        elif admitted:
            _raw_admitted(chain, keys, flags, lo, hi)
        else:
            _raw_chain(chain, trace, flags, lo, hi)
        if progress:
            progress(hi - lo)
    res = ReplayResult(flags=flags)
    res.tier_hits = [flags.count(i + 1) for i in range(len(chain.ev))]
    res.hits = sum(res.tier_hits)
    res.prefix_blocks = _prefix_runs(trace, flags)
    if len(chain.ev) == 1:
        res.tier_prefix_blocks = [sum(res.prefix_blocks)]
    else:
        per = [0] * len(chain.ev)
        starts = trace.starts
        for r, pb in enumerate(res.prefix_blocks):
            if pb:
                seg = flags[starts[r]:starts[r] + pb]
                for level in range(len(per)):
                    per[level] += seg.count(level + 1)
        res.tier_prefix_blocks = per
    res.inserted = list(chain.inserted) if not (simple or hooked) else [n - res.hits]
    res.promoted, res.demoted, res.rejected = chain.promoted, chain.demoted, chain.rejected
    return res


def _raw_lru(order: OrderedDict, cap: int, keys, flags, lo: int, hi: int) -> None:
    move = order.move_to_end
    pop = order.popitem
    for i in range(lo, hi):
        k = keys[i]
        if k in order:
            move(k)
            flags[i] = 1
        else:
            if len(order) >= cap:
                pop(False)
            order[k] = None


def _raw_generic(ev, keys, flags, lo: int, hi: int) -> None:
    cap = ev.capacity
    touch, insert, evict = ev.touch, ev.insert, ev.evict
    contains = ev.__contains__
    length = ev.__len__
    for i in range(lo, hi):
        k = keys[i]
        if contains(k):
            touch(k)
            flags[i] = 1
        else:
            while length() >= cap:
                if evict(incoming=k) is None:
                    break
            insert(k)


def _raw_admitted(chain: Chain, keys, flags, lo: int, hi: int) -> None:
    """One tier behind an admission policy: ``Chain.store(0, k)`` inlined (same decisions, same
    counters), without its per-access generality."""
    ev, ad = chain.ev[0], chain.ad[0]
    record, admit = ad.record, ad.admit
    cap = ev.capacity
    touch, insert, evict = ev.touch, ev.insert, ev.evict
    contains, length = ev.__contains__, ev.__len__
    order = ev._order if type(ev) is LRUPolicy and isinstance(getattr(ev, "_order", None), OrderedDict) else None
    peek = getattr(ev, "peek_victim", None)
    rejected = inserted = 0
    for i in range(lo, hi):
        k = keys[i]
        record(k)
        if contains(k):
            touch(k)
            flags[i] = 1
            continue
        if length() >= cap:
            victim = peek() if peek is not None else (next(iter(order)) if order else None)
            if not admit(k, victim):
                rejected += 1
                continue
            while length() >= cap:
                if evict(incoming=k) is None:
                    break
        elif not admit(k, None):
            rejected += 1
            continue
        insert(k)
        inserted += 1
    chain.rejected += rejected
    chain.inserted[0] += inserted


def _raw_hooked(ev, begin, trace: Trace, flags, lo: int, hi: int) -> None:
    """One tier, admission always, a policy with ``begin_sequence``: called at each request start."""
    import bisect
    keys, starts = trace.keys, trace.starts
    r = bisect.bisect_right(starts, lo) - 1  # the request holding lo
    while lo < hi:
        s, e = starts[r], starts[r + 1]
        if s == lo:
            begin()
        end = e if e < hi else hi
        _raw_generic(ev, keys, flags, lo, end)  # one request's accesses
        lo = end
        r += 1


def _raw_chain(chain: Chain, trace: Trace, flags, lo: int, hi: int) -> None:
    import bisect
    keys = trace.keys
    evs, ads = chain.ev, chain.ad
    hooks = _begin(evs)
    starts = trace.starts
    r = bisect.bisect_left(starts, lo)  # next request start at or after lo
    next_start = starts[r] if r < len(starts) else -1
    for i in range(lo, hi):
        if i == next_start:
            for h in hooks:
                h()
            r += 1
            next_start = starts[r] if r < len(starts) else -1
        k = keys[i]
        for a in ads:
            a.record(k)
        for level, ev in enumerate(evs):
            if k in ev:
                ev.touch(k)
                flags[i] = level + 1
                if level:
                    chain.promoted += 1
                    chain.store(0, k)
                break
        else:
            chain.store(0, k)


def _prefix_runs(trace: Trace, flags: bytearray) -> list:
    out = []
    starts = trace.starts
    find = flags.find
    for r in range(len(starts) - 1):
        s, e = starts[r], starts[r + 1]
        j = find(0, s, e)
        out.append((e if j < 0 else j) - s)
    return out


def _cacheable_end(trace: Trace, r: int, skip_partial: bool, block_tokens: int) -> int:
    """End of the blocks of request ``r`` a KV cache may hold: with ``skip_partial`` a last block
    that is not full (``input_length`` not a multiple of ``block_tokens``) is never stored."""
    e = trace.starts[r + 1]
    if skip_partial and e > trace.starts[r] and trace.tokens[r] % block_tokens:
        return e - 1
    return e


def replay_prefix(trace: Trace, chain: Chain, progress: Optional[Callable[[int], None]] = None,
                  skip_partial: bool = False, block_tokens: int = 512) -> ReplayResult:
    keys, starts = trace.keys, trace.starts
    evs, ads = chain.ev, chain.ad
    head = evs[0]
    n_tiers = len(evs)
    hooks = _begin(evs)
    tier_hits = [0] * n_tiers
    prefix_blocks = []
    record = [a.record for a in ads if not isinstance(a, AlwaysAdmit)]
    done = 0
    for r in range(len(starts) - 1):
        s, e = starts[r], starts[r + 1]
        for h in hooks:
            h()
        for rec in record:
            for i in range(s, e):
                rec(keys[i])
        i = s
        ec = _cacheable_end(trace, r, skip_partial, block_tokens)
        while i < ec:  # lookup: longest cached prefix
            k = keys[i]
            if k in head:
                head.touch(k)
                tier_hits[0] += 1
            else:
                for level in range(1, n_tiers):
                    ev = evs[level]
                    if k in ev:
                        ev.touch(k)
                        tier_hits[level] += 1
                        chain.promoted += 1
                        chain.store(0, k)
                        break
                else:
                    break
            i += 1
        prefix_blocks.append(i - s)
        while i < ec:  # recompute and store the rest
            k = keys[i]
            if k in head:
                head.touch(k)
            else:
                chain.store(0, k)
            i += 1
        if progress and (r & 255) == 0:
            progress(e - done)
            done = e
    if progress:
        progress(len(keys) - done)
    res = ReplayResult(hits=sum(tier_hits), tier_hits=tier_hits, prefix_blocks=prefix_blocks,
                       tier_prefix_blocks=list(tier_hits))
    res.inserted = list(chain.inserted)
    res.promoted, res.demoted, res.rejected = chain.promoted, chain.demoted, chain.rejected
    return res


# ---------------------------------------------------------------------------------------------
# Belady's offline optimum
# ---------------------------------------------------------------------------------------------
def next_uses(keys) -> list:
    """``nxt[i]``: index of the next access to ``keys[i]`` after ``i`` (``len(keys)`` if none)."""
    n = len(keys)
    nxt = [n] * n
    last: dict = {}
    for i in range(n - 1, -1, -1):
        k = keys[i]
        nxt[i] = last.get(k, n)
        last[k] = i
    return nxt


def replay_belady(trace: Trace, capacity: int, mode: str = "raw",
                  progress: Optional[Callable[[int], None]] = None, skip_partial: bool = False,
                  block_tokens: int = 512) -> ReplayResult:
    keys, starts = trace.keys, trace.starts
    n = len(keys)
    nxt = next_uses(keys)
    cached: dict = {}  # key -> its next use
    heap: list = []    # (-next use, key), stale entries skipped
    push, pop = heapq.heappush, heapq.heappop
    inserted = 0

    def admit(k, nu):
        nonlocal inserted
        if len(cached) >= capacity:
            # drop the cached key used farthest in the future, unless the incoming one is farther
            while True:
                neg, victim = heap[0]
                if cached.get(victim) == -neg:
                    break
                pop(heap)
            if -heap[0][0] <= nu:
                return  # bypass: the incoming block is the one to drop
            pop(heap)
            del cached[victim]
        cached[k] = nu
        push(heap, (-nu, k))
        inserted += 1

    if mode == "raw":
        flags = bytearray(n)
        for i in range(n):
            k = keys[i]
            nu = nxt[i]
            if k in cached:
                flags[i] = 1
                cached[k] = nu
                push(heap, (-nu, k))
            else:
                admit(k, nu)
            if (i & 0xFFFF) == 0xFFFF:
                if len(heap) > 8 * capacity + 4096:  # drop stale entries now and then
                    heap[:] = [(-v, key) for key, v in cached.items()]
                    heapq.heapify(heap)
                if progress:
                    progress(0x10000)
        if progress:
            progress(n & 0xFFFF)
        res = ReplayResult(flags=flags)
        res.hits = flags.count(1)
        res.tier_hits = [res.hits]
        res.prefix_blocks = _prefix_runs(trace, flags)
        res.tier_prefix_blocks = [sum(res.prefix_blocks)]
        res.inserted = [inserted]
        return res
    hits = 0
    prefix_blocks = []
    done = 0
    for r in range(len(starts) - 1):
        s, e = starts[r], starts[r + 1]
        i = s
        ec = _cacheable_end(trace, r, skip_partial, block_tokens)
        while i < ec and keys[i] in cached:
            k = keys[i]
            cached[k] = nxt[i]
            push(heap, (-nxt[i], k))
            i += 1
        prefix_blocks.append(i - s)
        hits += i - s
        while i < ec:
            k = keys[i]
            if k in cached:
                cached[k] = nxt[i]
                push(heap, (-nxt[i], k))
            else:
                admit(k, nxt[i])
            i += 1
        if len(heap) > 8 * capacity + 4096:  # drop stale entries now and then
            heap[:] = [(-v, k) for k, v in cached.items()]
            heapq.heapify(heap)
        if progress and (r & 255) == 0:
            progress(e - done)
            done = e
    if progress:
        progress(n - done)
    res = ReplayResult(hits=hits, tier_hits=[hits], prefix_blocks=prefix_blocks, inserted=[inserted],
                       tier_prefix_blocks=[hits])
    return res
