"""bench/tier_order.py: its trace-order replay is the simulator's prefix mode."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import tier_order  # noqa: E402
from ucm.sim.core import simulate  # noqa: E402
from ucm.sim.synth import conversation  # noqa: E402


def test_trace_order_equals_the_simulator_and_tail_first_differs_only_in_order():
    t = conversation(n_sessions=60, mean_turns=4.0, seed=1)
    for name in ("lru", "arc"):
        ref = simulate(t, mode="prefix", eviction=name, capacity_blocks=60)["hit_ratio"]
        assert abs(tier_order.replay(t, name, 60, tail_first=False) - ref) < 1e-12
        assert 0 < tier_order.replay(t, name, 60, tail_first=True) <= 1
