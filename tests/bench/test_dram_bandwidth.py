"""bench/dram_bandwidth.py's layouts move exact bytes (each run asserts its round trip)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import dram_bandwidth  # noqa: E402


@pytest.mark.parametrize("layout, api", [("whole-block", "pieces"), ("per-layer", "blocks"), ("vllm", "connector")])
@pytest.mark.parametrize("fragmented", [False, True])
@pytest.mark.parametrize("consecutive", [False, True])
def test_layouts_round_trip(layout, api, fragmented, consecutive):
    r = dram_bandwidth.run_layout(torch.device("cpu"), layout, api, blocks=24, piece=512, layers=3, reps=1,
                                  fragmented=fragmented, consecutive=consecutive)
    assert r["dump_gbps"] > 0 and r["load_gbps"] > 0 and r["bytes"] > 0
    assert r["layout"] == layout + ("/seq" if consecutive else "") + ("/frag" if fragmented else "")
