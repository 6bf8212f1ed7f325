"""The worker's layer-wise loads, without an engine: one store call per step for all requests,
layer by layer, exact bytes, pins released."""
from __future__ import annotations

import torch

from ucm.integration.vllm.keys import KeyMaker
from ucm.integration.vllm.metadata import LoadSpec, UcmConnectorMetadata
from ucm.integration.vllm import worker as worker_mod
from ucm.integration.vllm.worker import UcmWorker
from ucm.tiers import create_store

LAYERS, BLOCKS, ROW = 3, 32, 64  # 3 layers of (2, 32 blocks, 16 floats): K and V rows of 64 bytes


def kv_caches(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.self_attn.attn": torch.randn((2, BLOCKS, ROW // 4), generator=g)
            for i in range(LAYERS)}


def test_layerwise_loads_of_a_step_are_one_store_call_in_layer_order(monkeypatch):
    whole = LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 64 * whole, "planes": LAYERS})
    keys = KeyMaker(b"root", 16, 1)
    src = kv_caches(1)
    stored = [f"h{i}".encode() for i in range(6)]  # blocks 0..5 of the source hold h0..h5
    store.wait(store.dump_blocks([keys.rank_key(h, 0) for h in stored],
                                 [p for kv in src.values() for p in (kv[0], kv[1])], list(range(6))))
    store.commit([keys.rank_key(h, 0) for h in stored])

    dst = {name: torch.zeros_like(kv) for name, kv in src.items()}
    worker = UcmWorker(store, keys, 0, BLOCKS, whole)
    worker.register_kv_caches(dst)
    calls, layers_read = [], []
    real_open, real_read = store.open_blocks, store.read_planes
    store.open_blocks = lambda *a, **k: calls.append(a[0]) or real_open(*a, **k)
    store.read_planes = lambda br, planes, **k: layers_read.append(k["offset"]) or real_read(br, planes, **k)
    monkeypatch.setattr(worker_mod, "LOOKAHEAD", 1)  # launch one layer ahead of the model's
    # two requests sharing h0, h1 (a common prefix); both pinned by the scheduler beforehand
    a = LoadSpec("a", stored[:4], [10, 11, 12, 13], layerwise=True)
    b = LoadSpec("b", stored[:2] + stored[4:], [20, 21, 22, 23], layerwise=True)
    assert all(store.pin([keys.rank_key(h, 0) for h in s.block_hashes], s.req_id) for s in (a, b))
    worker.start_load_kv(UcmConnectorMetadata(loads=[a, b], seq=1))
    assert len(calls) == 1 and len(calls[0]) == 8, "one store call for the step's layer-wise loads"
    assert not store._pins, "pins are released once the load holds its blocks"
    assert len(layers_read) == 1, "layer 0 launched up front, the others as the model reaches them"
    assert store._reading, "the read keeps its blocks resident until every layer is copied"
    for i, name in enumerate(dst):
        worker.wait_for_layer_load(name)
        assert len(layers_read) == min(LAYERS, i + 2)
    assert layers_read == [i * 2 * ROW for i in range(LAYERS)], "each layer once, in model order"
    assert worker.get_block_ids_with_load_errors() == set()
    assert not store._reading, "blocks released once the read ended and its copies are done"
    for name in dst:
        for kv_row, src_row in [(10, 0), (11, 1), (12, 2), (13, 3), (20, 0), (21, 1), (22, 4), (23, 5)]:
            assert torch.equal(dst[name][:, kv_row], src[name][:, src_row]), (name, kv_row)
    store.close()
