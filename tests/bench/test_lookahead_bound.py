"""bench/lookahead_bound.py: Q = 0 is the plain policy; protecting the next requests' blocks helps a
cache that would otherwise evict them just before their use."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

from lookahead_bound import block_hit_ratio  # noqa: E402

from ucm.sim.replay import Chain, replay_prefix  # noqa: E402
from ucm.sim.trace import from_requests  # noqa: E402


def test_q0_equals_the_simulators_prefix_mode_and_lookahead_keeps_the_next_prefix():
    # A B C A: with 3 blocks of room LRU keeps only the newest request; knowing A comes back keeps it
    reqs = [["a1", "a2"], ["b1", "b2"], ["c1"], ["a1", "a2"]]
    t = from_requests("t", reqs)
    res = replay_prefix(t, Chain.build("lru", "always", [3]))
    assert block_hit_ratio(t, "lru", 3, 0) == res.hits / len(t.keys) == 0.0
    assert block_hit_ratio(t, "lru", 3, 3) == 2 / 7
