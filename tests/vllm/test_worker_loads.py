"""The worker's layer-wise loads, without an engine: one store call per step for all requests,
layer by layer, exact bytes, pins released."""
from __future__ import annotations

import pytest
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


def stored_and_worker(seed: int, stored: list[bytes]):
    """A DRAM store holding ``stored[i]`` = block i of a random source KV cache, and a worker over an
    empty KV cache of the same shape: (store, keys, src, dst, worker)."""
    whole = LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 64 * whole, "planes": LAYERS})
    keys = KeyMaker(b"root", 16, 1)
    src = kv_caches(seed)
    store.wait(store.dump_blocks([keys.rank_key(h, 0) for h in stored],
                                 [p for kv in src.values() for p in (kv[0], kv[1])], list(range(len(stored)))))
    store.commit([keys.rank_key(h, 0) for h in stored])
    dst = {name: torch.zeros_like(kv) for name, kv in src.items()}
    worker = UcmWorker(store, keys, 0, BLOCKS, whole)
    worker.register_kv_caches(dst)
    return store, keys, src, dst, worker


def test_layerwise_loads_of_a_step_are_one_store_call_in_layer_order(monkeypatch):
    stored = [f"h{i}".encode() for i in range(6)]  # blocks 0..5 of the source hold h0..h5
    store, keys, src, dst, worker = stored_and_worker(1, stored)
    calls, layers_read = [], []
    real_open, real_read = store.open_blocks, store.read_planes
    store.open_blocks = lambda *a, **k: calls.append(a[0]) or real_open(*a, **k)
    store.read_planes = lambda br, planes, **k: layers_read.append(k["offset"]) or real_read(br, planes, **k)
    monkeypatch.setattr(worker_mod, "LOOKAHEAD", 1)  # launch one layer ahead of the model's
    monkeypatch.setattr(worker_mod, "REFILL", 1)
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


def test_layers_are_launched_in_batches_one_store_call_each(monkeypatch):
    """Past layer 0, the layers ahead are launched several at a time: one read_planes call for
    consecutive layers (their planes follow each other in a block), each plane its own completion."""
    stored = [f"g{i}".encode() for i in range(5)]
    store, keys, src, dst, worker = stored_and_worker(4, stored)
    calls = []
    real_read = store.read_planes
    store.read_planes = lambda br, planes, **k: calls.append((k["offset"], len(planes))) or real_read(br, planes, **k)
    monkeypatch.setattr(worker_mod, "LOOKAHEAD", 8)
    spec = LoadSpec("a", stored, [3, 9, 4, 30, 31], layerwise=True)
    assert store.pin([keys.rank_key(h, 0) for h in stored], "a")
    worker.start_load_kv(UcmConnectorMetadata(loads=[spec], seq=1))
    assert calls == [(0, 2)], "layer 0 (its K and V planes) alone before the forward"
    names = list(dst)
    worker.wait_for_layer_load(names[0])
    assert calls == [(0, 2), (2 * ROW, 2 * (LAYERS - 1))], "then every other layer in one call"
    for name in names[1:]:
        worker.wait_for_layer_load(name)
    assert len(calls) == 2
    worker.finish_layer_loads()
    assert worker.get_block_ids_with_load_errors() == set() and not store._reading
    for name in dst:
        for row, src_row in zip([3, 9, 4, 30, 31], range(5)):
            assert torch.equal(dst[name][:, row], src[name][:, src_row])
    store.close()


@pytest.mark.parametrize("reach_the_end", [True, False])
def test_row_view_dumps_are_one_write_at_the_step_end(reach_the_end):
    """With row views the layers' saves only count; the step's end writes every layer in one call.
    A step whose end is never announced (the next step's plan comes first) is still written; one
    that missed a layer is dropped, never committed half-written."""
    from ucm.integration.vllm.metadata import DumpSpec

    whole = LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 16 * whole, "planes": LAYERS})
    keys = KeyMaker(b"root", 16, 1)
    src = kv_caches(5)
    worker = UcmWorker(store, keys, 0, BLOCKS, whole)
    worker.register_kv_caches(src)
    writes = []
    real_write = store.dump_rows
    store.dump_rows = lambda ids, planes, rows: writes.append(len(planes)) or real_write(ids, planes, rows)
    hashes = [f"d{i}".encode() for i in range(3)]
    meta = UcmConnectorMetadata(dumps=[DumpSpec("a", hashes, [7, 2, 19])], seq=1)
    for name in src:
        worker.save_kv_layer(meta, name)
    assert writes == [] and worker.pending_dumps() == 1
    if reach_the_end:
        worker.wait_for_save(meta)
    else:
        worker.note_meta(UcmConnectorMetadata(seq=2))  # the next step's plan ends this one
    assert writes == [2 * LAYERS], "one write, every layer's K and V planes"
    worker.close()
    stored = [keys.rank_key(h, 0) for h in hashes]
    assert store.lookup(stored) == [True] * 3
    dst = [torch.zeros(3, ROW, dtype=torch.uint8) for _ in range(2 * LAYERS)]
    assert store.wait(store.load_blocks(stored, dst, [0, 1, 2])) == 0
    planes = [p for kv in src.values() for p in (kv[0], kv[1])]
    for d, p in zip(dst, planes):
        assert torch.equal(d, p[[7, 2, 19]].contiguous().view(torch.uint8).view(3, ROW))

    partial = UcmWorker(store, keys, 0, BLOCKS, whole)
    partial.register_kv_caches(src)
    more = [f"e{i}".encode() for i in range(2)]
    meta = UcmConnectorMetadata(dumps=[DumpSpec("b", more, [1, 5])], seq=1)
    partial.save_kv_layer(meta, list(src)[0])  # the forward stopped after layer 0
    partial.wait_for_save(meta)
    partial.close()
    assert store.lookup([keys.rank_key(h, 0) for h in more]) == [False, False]
    store.close()


def test_cross_layer_layout_dumps_whole_rows_at_the_step_end_and_loads_them_back():
    """vLLM's cross-layer KV cache (``ucm_cross_layer``): one (blocks, layers, ...) tensor; a block's
    layers are one row, dumped whole at the end of the step and loaded back between steps."""
    from ucm.integration.vllm.metadata import DumpSpec

    nb, whole = 24, LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 16 * whole, "planes": 1})
    keys = KeyMaker(b"root", 16, 1)
    g = torch.Generator().manual_seed(3)
    src = torch.randn((nb, LAYERS, 2, ROW // 4), generator=g)  # block-major: a block = one row
    writer = UcmWorker(store, keys, 0, nb, whole)
    writer.register_cross_layers(src)
    hashes = [f"x{i}".encode() for i in range(4)]
    meta = UcmConnectorMetadata(dumps=[DumpSpec("a", hashes, [3, 4, 9, 17])], seq=1)
    for i in range(LAYERS):
        writer.save_kv_layer(meta, f"model.layers.{i}.self_attn.attn")  # no per-layer copies
    assert writer.pending_dumps() == 0
    writer.wait_for_save(meta)
    writer.close()  # commits the step's dump
    assert store.lookup([keys.rank_key(h, 0) for h in hashes]) == [True] * 4

    with torch.inference_mode():  # as vLLM allocates and registers its KV cache
        dst = torch.zeros_like(src)
        reader = UcmWorker(store, keys, 0, nb, whole)
        reader.register_cross_layers(dst)
    # the rows the copies write are a normal tensor: on CUDA the copier writes them outside inference
    # mode (index_copy_ into an inference tensor raised there, 2026-11-28, H200)
    (rows,) = reader._planes
    assert not rows.is_inference()
    rows[0, :1] = rows[0, :1]
    spec = LoadSpec("b", hashes, [0, 1, 2, 20], layerwise=False)
    reader.start_load_kv(UcmConnectorMetadata(loads=[spec], seq=1))
    done = set()
    for _ in range(200):
        done |= reader.finished_loads()
        if done:
            break
    assert done == {"b"} and reader.get_block_ids_with_load_errors() == set()
    for d_row, s_row in [(0, 3), (1, 4), (2, 9), (20, 17)]:
        assert torch.equal(dst[d_row], src[s_row])
    assert not dst[5:20].any()
    store.close()


def test_cross_layer_tensor_that_is_not_block_major_is_refused():
    import pytest

    whole = LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 4 * whole, "planes": 1})
    worker = UcmWorker(store, KeyMaker(b"root", 16, 1), 0, 24, whole)
    layer_major = torch.zeros((LAYERS, 24, 2, ROW // 4))
    with pytest.raises(ValueError, match="ucm_cross_layer"):
        worker.register_cross_layers(layer_major)
    store.close()


@pytest.mark.parametrize("skipped", [None, 1])
def test_the_forward_end_waits_only_for_planes_the_model_did_not_wait_for(monkeypatch, skipped):
    """Planes waited for before their layer's attention are not waited for again after the forward
    (vLLM's V1 runner calls that hook before the logits); a layer the model did not announce is."""
    stored = [f"w{i}".encode() for i in range(4)]
    store, keys, src, dst, worker = stored_and_worker(6, stored)
    waits = []
    real_wait = worker_mod._wait_part
    monkeypatch.setattr(worker_mod, "_wait_part", lambda part, t, *a: waits.append(part) or real_wait(part, t, *a))
    spec = LoadSpec("a", stored, [5, 6, 7, 8], layerwise=True)
    assert store.pin([keys.rank_key(h, 0) for h in stored], "a")
    worker.start_load_kv(UcmConnectorMetadata(loads=[spec], seq=1))
    for i, name in enumerate(dst):
        if i != skipped:
            worker.wait_for_layer_load(name)
    announced = len(waits)
    worker.finish_layer_loads()
    assert len(waits) - announced == (0 if skipped is None else 2), "only the skipped layer's K and V planes"
    assert worker.get_block_ids_with_load_errors() == set() and not store._reading
    for name in dst:
        for row, src_row in zip([5, 6, 7, 8], range(4)):
            assert torch.equal(dst[name][:, row], src[name][:, src_row])
    store.close()


def test_a_layer_hook_looks_the_current_stream_up_once(monkeypatch):
    """Every part of a layer's planes waits on the same stream, looked up once per hook call."""
    looked, waited = [], []

    class Part:
        def stream_wait(self, stream=None):
            waited.append(stream)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: looked.append(1) or "stream")
    streams: list = []
    assert all(worker_mod._wait_part(Part(), 1.0, streams) for _ in range(5))
    assert looked == [1] and waited == ["stream"] * 5
    assert worker_mod._wait_part(Part(), 1.0) and waited[-1] is None  # no cache: the part looks it up


def _worker_with_shared_completions(monkeypatch, seed):
    """A worker whose one layer-wise load has planes 0-3 (layers 0 and 1) sharing completion "a" and
    planes 4-5 (layer 2) sharing "b", as the GPU copier groups them; every stream wait is logged."""
    import types

    store, keys, src, dst, worker = stored_and_worker(seed, [b"s%d" % seed])
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: "stream")
    waits = []

    class Part:
        def __init__(self, name):
            self.name = name

        def stream_wait(self, stream=None):
            waits.append(self.name)

    a, b = Part("a"), Part("b")
    task = types.SimpleNamespace(done=lambda: True, failed={})
    worker._layer_loads = [worker_mod._LayerLoad("r", task, ([], []), [], 0.0, planes=[[a]] * 4 + [[b]] * 2)]
    return store, list(dst), worker, waits


def test_planes_sharing_a_completion_are_waited_for_once(monkeypatch):
    """A load's neighbouring planes share one completion (the GPU copier groups them): the model's
    stream waits for it once, at the first layer that needs it, and every layer still waits for its own."""
    store, names, worker, waits = _worker_with_shared_completions(monkeypatch, 7)
    worker.wait_for_layer_load(names[0])
    assert waits == ["a"]
    worker.wait_for_layer_load(names[1])
    assert waits == ["a"]  # already waited for
    worker.wait_for_layer_load(names[2])
    assert waits == ["a", "b"]
    worker._layer_loads = []
    store.close()


def test_the_forward_end_waits_once_for_a_completion_the_model_waited_for(monkeypatch):
    """A plane whose layer the model did not announce is waited for at the forward's end, unless its
    completion (shared with an announced plane) was waited for already."""
    store, names, worker, waits = _worker_with_shared_completions(monkeypatch, 8)
    worker.wait_for_layer_load(names[0])  # layer 1 (planes 2, 3: a) and layer 2 (b) not announced
    worker.finish_layer_loads()
    assert waits == ["a", "b"]
    store.close()


def test_a_prefetched_load_starts_at_allocation_and_the_step_adopts_it():
    """``prefetch`` (ucm_layerwise_prefetch): every layer's copies start before the step, the blocks'
    pin passes to the read; the step's start_load_kv adopts it (no second store call), its layers
    wait for it, and the bytes land exactly."""
    stored = [f"p{i}".encode() for i in range(4)]
    store, keys, src, dst, worker = stored_and_worker(7, stored)
    calls = []
    real_open = store.open_blocks
    store.open_blocks = lambda *a, **k: calls.append(a[0]) or real_open(*a, **k)
    spec = LoadSpec("a", stored, [8, 2, 5, 30], layerwise=True)
    assert store.pin([keys.rank_key(h, 0) for h in stored], "a")
    assert worker.prefetch(spec) is True
    assert len(calls) == 1 and not store._pins, "the read holds the blocks now, not the scheduler's pin"
    assert not worker.prefetch(spec), "once per request"
    worker.start_load_kv(UcmConnectorMetadata(loads=[spec], seq=1))
    assert len(calls) == 1, "the step adopts the prefetched load instead of loading again"
    for name in dst:
        worker.wait_for_layer_load(name)
    worker.finish_layer_loads()
    assert worker.get_block_ids_with_load_errors() == set() and not store._reading
    for name in dst:
        for kv_row, src_row in [(8, 0), (2, 1), (5, 2), (30, 3)]:
            assert torch.equal(dst[name][:, kv_row], src[name][:, src_row]), (name, kv_row)
    assert worker.stats.data["loaded_blocks"] == 4
    store.close()


def test_prefetch_needs_per_layer_row_views():
    """Without registered row views (nothing registered yet) nothing starts: the step loads as usual."""
    whole = LAYERS * 2 * ROW
    store = create_store("UcmDramStore", {"kv_block_size": whole, "max_cache_size": 8 * whole, "planes": LAYERS})
    worker = UcmWorker(store, KeyMaker(b"root", 16, 1), 0, BLOCKS, whole)
    assert worker.prefetch(LoadSpec("a", [b"x"], [1], layerwise=True)) is False
    store.close()
