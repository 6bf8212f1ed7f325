"""bench/layer_launch.py moves exact bytes on every row order (each run asserts its round trip)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import layer_launch  # noqa: E402
from ucm.tiers import planes  # noqa: E402


def test_row_orders_are_what_vllm_hands_out():
    assert layer_launch.dst_rows("consecutive", 3, 10) == [10, 11, 12]
    # reused blocks: ascending pairs in descending order (vLLM frees a request's blocks in reverse)
    assert layer_launch.dst_rows("pairs", 6, 10) == [14, 15, 12, 13, 10, 11]
    assert sorted(layer_launch.dst_rows("pairs", 7, 10)) == list(range(10, 17))


@pytest.mark.parametrize("order", layer_launch.ORDERS)
def test_every_order_round_trips_and_restores_the_copier(order):
    before = planes.MIN_RUN_BYTES
    r = layer_launch.run(torch.device("cpu"), order, layers=3, blocks=10, layer_bytes=256, reps=1)
    assert planes.MIN_RUN_BYTES == before
    assert r["row_runs"] == (1 if order == "consecutive" else 5) and r["slot_runs"] == 1
    assert r["load_gbps"] > 0 and r["dump_gbps"] > 0 and r["load_cpu_us_per_layer"] > 0


def test_loads_launch_ahead_as_the_worker_does_and_dumps_follow_each_layer():
    events = []

    class Part:
        def __init__(self, layer):
            self.layer = layer

        def wait(self, timeout):
            events.append(("wait", self.layer))
            return True

    def call(layer):
        events.append(("issue", layer))
        return [Part(layer)]

    model = layer_launch.Model(torch.device("cpu"))
    assert len(layer_launch._load_layers(call, 8, model)) == 8
    issued_before_wait = {}
    n = 0
    for kind, layer in events:
        n += kind == "issue"
        if kind == "wait":
            issued_before_wait[layer] = n
    # two layers a layer until 4 ahead, never past the last layer
    assert issued_before_wait == {0: 2, 1: 4, 2: 6, 3: 8, 4: 8, 5: 8, 6: 8, 7: 8}
    events.clear()
    assert len(layer_launch._dump_layers(call, 3, model)) == 3
    assert events == [("issue", 0), ("issue", 1), ("issue", 2)]
