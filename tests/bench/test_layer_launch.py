"""bench/layer_launch.py moves exact bytes on every row order (each run asserts its round trip)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import layer_launch  # noqa: E402
from ucm.tiers import planes  # noqa: E402


def test_row_orders():
    assert layer_launch.dst_rows("consecutive", 3, 10) == [10, 11, 12]
    assert layer_launch.dst_rows("interleaved", 3, 10) == [10, 12, 14]  # no two rows adjacent


@pytest.mark.parametrize("order", layer_launch.ORDERS)
def test_every_order_round_trips_and_restores_the_copier(order):
    before = planes.MIN_RUN_BYTES
    r = layer_launch.run(torch.device("cpu"), order, layers=3, blocks=10, layer_bytes=256, reps=1)
    assert planes.MIN_RUN_BYTES == before
    assert r["row_runs"] == (1 if order == "consecutive" else 10) and r["slot_runs"] == 1
    assert r["load_gbps"] > 0 and r["dump_gbps"] > 0 and r["load_cpu_us_per_layer"] > 0


def test_loads_launch_batches_ahead_as_the_worker_does_and_dumps_follow_the_forward():
    from ucm.integration.vllm import worker

    events = []

    class Part:
        def __init__(self, layer):
            self.layer = layer

        def wait(self, timeout):
            events.append(("wait", self.layer))
            return True

    def call(first, upto):
        events.append(("issue", first, upto))
        return [[Part(layer)] for layer in range(first, upto)]

    model = layer_launch.Model(torch.device("cpu"))
    layers = 20
    calls = len(layer_launch._load_layers(call, layers, model))
    issues = [e[1:] for e in events if e[0] == "issue"]
    assert issues[0] == (0, 1), "layer 0 alone before the first layer computes"
    assert [a for a, _ in issues[1:]] == [b for _, b in issues[:-1]] and issues[-1][1] == layers, \
        "consecutive batches, every layer once"
    assert calls == len(issues) < layers // 2, "batches of several layers"
    issued = 0
    for e in events:  # each layer launched before it is waited for, and at most LOOKAHEAD ahead
        if e[0] == "issue":
            issued = e[2]
        else:
            assert e[1] < issued <= e[1] + 1 + worker.LOOKAHEAD
    events.clear()
    assert len(layer_launch._dump_layers(lambda: events.append("dump"), 3, model)) == 1
    assert events == ["dump"]
