"""Synthetic trace generators (seeded, pure Python).

- ``zipf``: ``n_accesses`` independent one-block requests, block ``i`` (1..n_objects) drawn with
  probability proportional to ``1 / i**alpha``; ids are shuffled ranks.
- ``scan``: a Zipf stream where, with probability ``scan_prob`` per request, a sequential scan of
  ``scan_len`` never-reused blocks is inserted (the classic LRU-killer).
- ``conversation``: multi-turn chat. ``n_sessions`` sessions share one of ``n_system_prompts``
  system prompts (``system_blocks`` blocks); each turn re-sends the whole context plus
  ``turn_blocks`` new blocks; sessions are interleaved at random, a session has
  ``1 + geometric(mean_turns)`` turns. Block ids are prefix hashes (an id stands for its whole
  prefix), as in the Mooncake traces.
"""
from __future__ import annotations

import itertools
import random

from ucm.sim.trace import Trace, from_requests


def zipf_keys(n_accesses: int, n_objects: int, alpha: float, seed: int = 0) -> list:
    rng = random.Random(seed)
    weights = [1.0 / (i ** alpha) for i in range(1, n_objects + 1)]
    cum = list(itertools.accumulate(weights))
    ids = list(range(n_objects))
    rng.shuffle(ids)
    return rng.choices(ids, cum_weights=cum, k=n_accesses)


def zipf(n_accesses: int = 1_000_000, n_objects: int = 100_000, alpha: float = 1.0, seed: int = 0,
         block_tokens: int = 512) -> Trace:
    keys = zipf_keys(n_accesses, n_objects, alpha, seed)
    t = Trace(f"zipf(a={alpha},n={n_objects},m={n_accesses},seed={seed})", keys,
              list(range(len(keys) + 1)), [block_tokens] * len(keys))
    return t


def scan(n_accesses: int = 1_000_000, n_objects: int = 100_000, alpha: float = 1.0, scan_prob: float = 0.001,
         scan_len: int = 1000, seed: int = 0, block_tokens: int = 512) -> Trace:
    rng = random.Random(seed + 1)
    base = zipf_keys(n_accesses, n_objects, alpha, seed)
    reqs = []
    fresh = n_objects
    total = 0
    for k in base:
        if total >= n_accesses:
            break
        if rng.random() < scan_prob:
            reqs.append(list(range(fresh, fresh + scan_len)))
            fresh += scan_len
            total += scan_len
        reqs.append([k])
        total += 1
    return from_requests(f"scan(a={alpha},n={n_objects},p={scan_prob},len={scan_len},seed={seed})", reqs, block_tokens)


def conversation(n_sessions: int = 2000, mean_turns: float = 4.0, n_system_prompts: int = 20,
                 system_blocks: int = 8, turn_blocks: int = 4, seed: int = 0, block_tokens: int = 512) -> Trace:
    rng = random.Random(seed)
    next_id = itertools.count()
    prompts = [[next(next_id) for _ in range(system_blocks)] for _ in range(n_system_prompts)]
    pweights = [1.0 / (i + 1) for i in range(n_system_prompts)]
    sessions = []
    for _ in range(n_sessions):
        turns = 1
        while rng.random() < 1.0 - 1.0 / max(mean_turns, 1.0):
            turns += 1
        sessions.append([rng.choices(prompts, weights=pweights)[0][:], turns])
    active = list(range(n_sessions))
    reqs = []
    while active:
        i = rng.randrange(len(active))
        s = sessions[active[i]]
        ctx, left = s
        ctx.extend(next(next_id) for _ in range(turn_blocks))
        reqs.append(list(ctx))
        s[1] = left - 1
        if s[1] <= 0:
            active[i] = active[-1]
            active.pop()
    return from_requests(f"conversation(s={n_sessions},t={mean_turns},seed={seed})", reqs, block_tokens)


GENERATORS = {"zipf": zipf, "scan": scan, "conversation": conversation}


def generate(kind: str, **params) -> Trace:
    gen = GENERATORS.get(kind)
    if gen is None:
        raise ValueError(f"unknown synthetic trace {kind!r}: choose one of {sorted(GENERATORS)}")
    return gen(**params)
