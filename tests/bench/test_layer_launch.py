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
