"""The chain: demotion on eviction, promotion on load, lookup across tiers, warm restart."""
import os

import pytest
import torch

from ucm.tiers import OK, create_store
from tests.tiers.conftest import BLOCK, get, put, rand_block, writer_held


def test_evicted_blocks_are_demoted_and_still_hit(chain):
    ids = [f"b{i}" for i in range(10)]  # HBM holds 2, DRAM 4: the rest spill to disk
    data = {}
    for n, i in enumerate(ids):
        data.update(put(chain, [i], seed=n))
    assert chain.lookup(ids) == [True] * 10
    hbm, dram, disk = chain.tiers
    assert hbm.stats()["used_slots"] <= 2 and dram.stats()["used_slots"] <= 4
    assert disk.stats()["blocks"] >= 4
    for i in ids:
        code, out = get(chain, i)
        assert code == OK and torch.equal(out, data[i]), i


def test_load_from_lower_tier_promotes_to_head(chain):
    data = {}
    for n in range(8):
        data.update(put(chain, [f"b{n}"], seed=n))
    hbm, dram, disk = chain.tiers
    assert not hbm.has(b"b0") and disk.has(b"b0")
    code, out = get(chain, "b0")
    assert code == OK and torch.equal(out, data["b0"])
    assert hbm.has(b"b0"), "promoted into the fastest tier"
    assert chain.counters["promoted"] >= 1


def test_dump_falls_through_when_the_head_is_full_of_writes(chain):
    ids = [f"w{i}" for i in range(5)]  # head has 2 slots, all busy with this very dump
    data = {i: torch.randint(0, 256, (BLOCK,), dtype=torch.uint8) for i in ids}
    assert chain.wait(chain.dump(ids, [0] * 5, list(data.values()))) == OK
    chain.commit(ids)
    assert chain.lookup(ids) == [True] * 5
    for i in ids:
        assert torch.equal(get(chain, i)[1], data[i])


def test_dram_disk_chain_survives_a_restart(tmp_path):
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 2 * BLOCK, "disk": {"path": str(tmp_path / "d")}}
    with create_store("dram_disk", cfg) as first:
        data = {}
        for n in range(6):
            data.update(put(first, [f"b{n}"], seed=n))
    with create_store("dram_disk", cfg) as second:  # DRAM is empty now: hits come from disk
        spilled = [f"b{n}" for n in range(4)]
        assert second.lookup(spilled) == [True] * 4
        for i in spilled:
            code, out = get(second, i)
            assert code == OK and torch.equal(out, data[i])


def test_load_blocks_mixes_head_and_lower_tiers(chain):
    planes = [torch.randint(0, 256, (12, BLOCK // 2), dtype=torch.uint8) for _ in range(2)]
    ids = [f"m{i}" for i in range(8)]  # more than HBM (2) + DRAM (4): some end on disk
    for i, bid in enumerate(ids):
        assert chain.wait(chain.dump_blocks([bid], planes, [i])) == OK
        chain.commit([bid])
    assert chain.lookup(ids) == [True] * 8
    out = [torch.zeros_like(t) for t in planes]
    task = chain.load_blocks(ids, out, list(range(4, 12)))
    assert chain.wait(task) == OK
    for src, dst in zip(planes, out):
        assert torch.equal(dst[4:12], src[0:8])


def test_dump_of_a_block_committed_below_the_head_is_skipped(chain):
    """Found by the dict model: a block demoted to DRAM and dumped again must keep its first bytes
    (ids are content hashes), not get a second, different copy in the head."""
    first = put(chain, ["k0"], seed=1)["k0"]
    put(chain, ["x", "y", "z"], seed=10)  # the 2-block head evicts k0 into DRAM
    assert not chain.head.holds(b"k0") and chain.lookup(["k0"]) == [True]
    put(chain, ["k0"], seed=99)  # other bytes under the same id: skipped
    code, out = get(chain, "k0")
    assert code == 0 and torch.equal(out, first)


def test_demotion_to_disk_does_not_wait_for_the_file(tmp_path):
    """DRAM evicts into the disk tier: the block is hittable (from memory) at once, its file is
    written in the background, and flush() waits for it; a restart then finds it."""
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 1 * BLOCK, "disk": {"path": str(tmp_path / "d")}}
    with create_store("dram_disk", cfg) as store:
        first = put(store, ["a"], seed=1)["a"]
        put(store, ["b"], seed=2)  # the 1-block DRAM evicts "a" into the disk tier
        disk = store.tier("disk")
        assert store.lookup(["a"]) == [True] and not store.head.holds(b"a")
        code, out = get(store, "a")
        assert code == OK and torch.equal(out, first)
        store.flush()
        assert not disk._writing and os.path.exists(disk.file_of(b"a"))
    with create_store("dram_disk", cfg) as again:
        assert again.lookup(["a"]) == [True]


def test_demotion_buffers_are_recycled_and_bytes_stay_exact(tmp_path):
    """A DRAM victim is copied into a spare buffer that the disk tier gives back once its file is
    written; later demotions reuse those buffers (no fresh allocation per block), a block read while
    its file is pending comes back as a copy, and every block reads back exactly."""
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 2 * BLOCK, "disk": {"path": str(tmp_path / "d")}}
    with create_store("dram_disk", cfg) as store:
        dram, disk = store.head, store.tier("disk")
        data = {}
        for n in range(6):
            data.update(put(store, [f"k{n}"], seed=n))
        store.flush()
        spare = {t.data_ptr() for t in dram._spares._free}
        assert spare, "written demotions gave their buffers back"
        with writer_held(disk):  # the next file stays pending
            for n in range(6, 10):
                data.update(put(store, [f"k{n}"], seed=n))
            pending = next(iter(disk._writing.items()), None)
            assert pending is not None and pending[1].data_ptr() in spare, "a recycled buffer was used"
            assert disk.read_block(pending[0]).data_ptr() != pending[1].data_ptr(), "pending reads are copies"
        store.flush()
        for k, want in data.items():
            code, out = get(store, k)
            assert code == OK and torch.equal(out, want), k


def _layers(n_rows, n_layers=2):
    return [torch.randint(0, 256, (n_rows, BLOCK // n_layers), dtype=torch.uint8) for _ in range(n_layers)]


def _write_layer_by_layer(chain, ids, rows, layers):
    bw = chain.reserve_blocks(ids, rows)
    for i, plane in enumerate(layers):
        chain.write_planes(bw, [plane], offset=i * plane.shape[1])
    code = chain.wait(bw.task)
    chain.commit(ids)
    return code


def test_layer_by_layer_dump_goes_through_the_heads_block_api(chain, monkeypatch):
    """vLLM's dump path (reserve once, a layer at a time) reaches the head's own block API: the
    piece-by-piece dump (~2 ms a block on the CPU) is not used for blocks it takes."""
    monkeypatch.setattr(chain.head, "dump", lambda *a: (_ for _ in ()).throw(AssertionError("piece path")))
    layers = _layers(4)
    assert _write_layer_by_layer(chain, ["p0", "p1"], [3, 1], layers) == OK
    for bid, row in (("p0", 3), ("p1", 1)):
        assert chain.head.holds(bid.encode())
        assert torch.equal(get(chain, bid)[1], torch.cat([p[row] for p in layers]))


def test_layer_by_layer_dump_falls_through_when_the_head_is_full_of_writes(chain):
    ids = [f"f{i}" for i in range(5)]  # the head has 2 slots: 3 blocks of this dump go below
    layers = _layers(5)
    assert _write_layer_by_layer(chain, ids, list(range(5)), layers) == OK
    assert chain.lookup(ids) == [True] * 5
    for row, bid in enumerate(ids):
        assert torch.equal(get(chain, bid)[1], torch.cat([p[row] for p in layers])), bid


def test_layer_by_layer_dump_skips_blocks_committed_below(chain):
    first = put(chain, ["s0"], seed=1)["s0"]
    put(chain, ["x", "y", "z"], seed=10)  # the 2-block head evicts s0 into DRAM
    assert not chain.head.holds(b"s0") and chain.lookup(["s0"]) == [True]
    assert _write_layer_by_layer(chain, ["s0"], [0], _layers(1)) == OK  # other bytes, same id
    assert torch.equal(get(chain, "s0")[1], first)


def test_write_planes_needs_the_chains_own_reservation(chain):
    with pytest.raises(ValueError, match="reserve_blocks"):
        chain.write_planes(chain.head.reserve_blocks(["q"], [0]), _layers(1)[:1])


def _spill_chain(tmp_path, slots=8, ahead=0.5):
    """DRAM of ``slots`` blocks in two planes (a block's slot is a strided view of the pool) over disk."""
    cfg = {"kv_block_size": BLOCK, "planes": 2, "max_cache_size": slots * BLOCK, "demote_ahead": ahead,
           "disk": {"path": str(tmp_path / "d")}}
    return create_store("dram_disk", cfg)


def _dump_rows(store, prefix, rows, layers):
    ids = [f"{prefix}{r}" for r in rows]
    assert _write_layer_by_layer(store, ids, list(rows), layers) == OK
    return {bid: torch.cat([p[r] for p in layers]) for bid, r in zip(ids, rows)}


def test_a_full_dram_evicts_ahead_so_the_next_dump_copies_nothing(tmp_path, monkeypatch):
    """Once a dump fills the DRAM, as many committed blocks as it took are evicted ahead: they go to
    the disk tier straight from their slots (no copy on the caller's thread), and the slots come back
    once written. The next dump of that size finds free slots and copies no victim."""
    with _spill_chain(tmp_path) as store:  # 8 slots, at most 4 ahead
        dram, disk = store.head, store.tier("disk")
        layers = _layers(12)
        data = _dump_rows(store, "a", range(4), layers)
        assert dram.counters["demoted_ahead"] == 0 and len(dram._free) == 4
        data.update(_dump_rows(store, "b", range(4, 8), layers))  # full: a0-a3 leave ahead
        assert dram.counters["demoted_ahead"] == 4 and not any(dram.holds(k.encode()) for k in ("a0", "a3"))
        store.flush()
        assert len(dram._free) == 4 and dram._draining == 0
        monkeypatch.setattr(dram._spares, "take", lambda: (_ for _ in ()).throw(AssertionError("copied a victim")))
        data.update(_dump_rows(store, "c", range(8, 12), layers))
        monkeypatch.undo()  # reads below promote disk blocks into the DRAM: those evictions may copy
        store.flush()
        assert dram.counters["demoted_ahead"] == 8 and len(dram._blocks) + len(dram._free) == dram.num_slots
        assert store.lookup(list(data)) == [True] * 12
        for bid, want in data.items():
            code, out = get(store, bid)
            assert code == OK and torch.equal(out, want), bid
        assert disk.counters["written"] >= 8  # (+ what the reads' promotions pushed down)


def test_a_block_demoted_ahead_reads_back_exactly_while_its_file_is_pending(tmp_path):
    with _spill_chain(tmp_path) as store:
        dram, disk = store.head, store.tier("disk")
        layers = _layers(8)
        want = _dump_rows(store, "p", range(4), layers)
        with writer_held(disk):  # the files stay pending
            want.update(_dump_rows(store, "q", range(4, 8), layers))
            assert dram._draining == 4 and len(disk._writing) == 4, "demoted ahead, files not written yet"
            for key in list(disk._writing):
                out = disk.read_block(key)  # the pending bytes are the DRAM slot (a strided view): a flat copy
                assert out.dim() == 1 and torch.equal(out, want[key.decode()])
        store.flush()
        assert dram._draining == 0 and len(dram._free) == 4
        for bid, data in want.items():
            assert torch.equal(get(store, bid)[1], data), bid


def test_demote_ahead_zero_keeps_the_dram_full(tmp_path):
    with _spill_chain(tmp_path, ahead=0.0) as store:
        layers = _layers(12)
        for n in range(3):
            assert _write_layer_by_layer(store, [f"z{n}-{i}" for i in range(4)], list(range(4 * n, 4 * n + 4)),
                                         layers) == OK
        store.flush()
        assert store.head.counters["demoted_ahead"] == 0 and not store.head._free


def test_an_error_while_loading_from_below_fails_the_blocks_never_reports_ok(chain, monkeypatch):
    data = {}
    for n in range(4):
        data.update(put(chain, [f"e{n}"], seed=n))  # the 2-block head pushes e0, e1 below
    assert not chain.head.holds(b"e0")

    def broken(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(chain.head, "write_block", broken)  # the promotion raises on the promoter thread
    out = torch.zeros(BLOCK, dtype=torch.uint8)
    assert chain.wait(chain.load(["e0"], [0], [out])) != OK
    planes = [torch.zeros(4, BLOCK, dtype=torch.uint8)]
    task = chain.load_blocks(["e1"], planes, [2])
    assert chain.wait(task) != OK and b"e1" in task.failed
    monkeypatch.undo()
    assert torch.equal(get(chain, "e0")[1], data["e0"])


def test_a_disk_hit_is_read_straight_into_a_dram_slot(tmp_path):
    """A block found on disk is promoted by reading its file into a fresh DRAM slot (no temporary
    block, no second copy), then loaded from there with the rest of the call."""
    with _spill_chain(tmp_path, slots=4, ahead=0.0) as store:
        layers = _layers(8)
        want = _dump_rows(store, "d", range(8), layers)  # d0..d3 end on disk
        store.flush()
        on_disk = [k for k in want if not store.head.holds(k.encode())]
        assert len(on_disk) == 4
        out = [torch.zeros_like(p) for p in layers]
        rows = [int(k[1:]) for k in on_disk]
        assert store.wait(store.load_blocks(on_disk, out, rows)) == OK
        assert store.head.counters["filled"] == 4 and store.counters["promoted"] == 4
        for k, row in zip(on_disk, rows):
            assert torch.equal(torch.cat([o[row] for o in out]), want[k]), k


def test_concurrent_disk_hits_and_dumps_never_return_wrong_bytes(tmp_path):
    """Loads promoting disk blocks into a small DRAM on several threads, while another thread
    dumps (new ids and ids already stored, same bytes: ids are content hashes): every block a load
    reports OK holds exactly its bytes."""
    import random
    import threading

    width = BLOCK // 2

    def content(bid: str) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(hash(bid) % (1 << 31))
        return [torch.randint(0, 256, (width,), dtype=torch.uint8, generator=g) for _ in range(2)]

    with _spill_chain(tmp_path, slots=8, ahead=0.25) as store:
        ids = [f"c{i}" for i in range(32)]
        for i in range(0, 32, 4):
            chunk = ids[i:i + 4]
            planes = [torch.stack([content(b)[p] for b in chunk]) for p in range(2)]
            assert _write_layer_by_layer(store, chunk, list(range(4)), planes) == OK
        errors, ok, stop = [], [], threading.Event()

        def loader(seed):
            rnd = random.Random(seed)
            for _ in range(40):
                pick = rnd.sample(ids, 5)
                out = [torch.zeros(8, width, dtype=torch.uint8) for _ in range(2)]
                task = store.load_blocks(pick, out, list(range(5)))
                store.wait(task)
                for row, bid in enumerate(pick):
                    if bid.encode() not in task.failed:
                        ok.append(bid)
                        want = content(bid)
                        if not (torch.equal(out[0][row], want[0]) and torch.equal(out[1][row], want[1])):
                            errors.append(bid)

        def dumper():
            n = 0
            while not stop.is_set():
                chunk = [f"n{n}", f"n{n + 1}", ids[n % 32]]
                planes = [torch.stack([content(b)[p] for b in chunk]) for p in range(2)]
                _write_layer_by_layer(store, chunk, [0, 1, 2], planes)
                n += 2

        threads = [threading.Thread(target=loader, args=(s,)) for s in range(3)]
        d = threading.Thread(target=dumper)
        d.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        d.join()
        assert not errors, errors[:5]
        assert len(ok) > 300 and store.head.counters["filled"] > 0, (len(ok), store.head.counters)


def _backlog_chain(tmp_path, backlog_blocks, ahead=0.0, slots=8):
    cfg = {"kv_block_size": BLOCK, "planes": 2, "max_cache_size": slots * BLOCK, "demote_ahead": ahead,
           "disk": {"path": str(tmp_path / "d"), "max_write_backlog": backlog_blocks * BLOCK}}
    return create_store("dram_disk", cfg)


def test_a_disk_behind_its_backlog_drops_victims_and_the_dump_never_waits(tmp_path):
    """The disk writes slower than victims arrive (its writer is held): a dump into the full DRAM
    queues victims up to ``disk.max_write_backlog`` and drops the rest (later misses) instead of
    copying them out or waiting; the DRAM never exceeds its slots, and every block still stored
    reads back exactly."""
    with _backlog_chain(tmp_path, backlog_blocks=2) as store:
        dram, disk = store.head, store.tier("disk")
        layers = _layers(12)
        data = _dump_rows(store, "a", range(8), layers)  # fills the DRAM
        with writer_held(disk):
            data.update(_dump_rows(store, "b", range(8, 12), layers))  # would deadlock if it waited
            assert dram.counters["evictions"] == 4
            assert dram.counters["demoted"] == 2 and dram.counters["dropped"] == 2
            assert len(disk._writing) == 2 and disk.demotion_room() == 0
            assert len(dram._blocks) <= dram.num_slots
        store.flush()
        assert disk.demotion_room() == 2
        hit = store.lookup(list(data), record=False)
        assert sum(hit) == 10 and all(hit[8:]), "the 2 dropped victims are misses, everything else hits"
        # the call's first victims (a's last blocks, chain order) are the dropped ones: a's blocks
        # next to its head went to disk, so a's cached prefix is 6 blocks long, not 4
        assert hit[:8] == [True] * 6 + [False] * 2, hit[:8]
        for bid, want in data.items():
            if store.lookup([bid], record=False)[0]:
                code, out = get(store, bid)
                assert code == OK and torch.equal(out, want), bid


def test_a_burst_past_the_backlog_keeps_the_prefix_it_evicts_last(tmp_path):
    """Two prompts fill the DRAM; a third prompt's dump evicts both whole while the disk is held:
    the backlog takes 3 of the 8 victims. They are the last ones evicted (the most recently used
    prompt's head: chain order evicts tails first), so that prompt keeps a 3-block prefix on disk,
    where keeping the first victims would have kept the other prompt's tail, which no lookup reaches."""
    with _backlog_chain(tmp_path, backlog_blocks=3, slots=8) as store:
        layers = _layers(16)
        older = _dump_rows(store, "a", range(4), layers)
        newer = _dump_rows(store, "b", range(4, 8), layers)
        disk = store.tier("disk")
        with writer_held(disk):
            _dump_rows(store, "c", range(8, 16), layers)  # 8 new blocks: every stored block is a victim
            assert store.head.counters["dropped"] == 5 and len(disk._writing) == 3
        store.flush()
        assert store.lookup(list(newer), record=False) == [True, True, True, False]
        assert store.lookup(list(older), record=False) == [False] * 4
        for bid in list(newer)[:3]:
            code, out = get(store, bid)
            assert code == OK and torch.equal(out, newer[bid]), bid


def test_demote_ahead_hands_down_no_more_than_the_backlog_takes(tmp_path):
    with _backlog_chain(tmp_path, backlog_blocks=2, ahead=0.5) as store:
        dram, disk = store.head, store.tier("disk")
        layers = _layers(8)
        _dump_rows(store, "a", range(4), layers)
        with writer_held(disk):
            _dump_rows(store, "b", range(4, 8), layers)  # full: would evict 4 ahead, the backlog takes 2
            assert dram._draining == 2 and dram.counters["demoted_ahead"] == 2 and len(disk._writing) == 2
        store.flush()
        assert dram._draining == 0 and len(dram._free) == 2


def test_a_backlog_of_zero_demotes_nothing(tmp_path):
    with _backlog_chain(tmp_path, backlog_blocks=0, ahead=0.25) as store:
        layers = _layers(12)
        data = _dump_rows(store, "a", range(8), layers)
        data.update(_dump_rows(store, "b", range(8, 12), layers))
        store.flush()
        dram, disk = store.head, store.tier("disk")
        assert dram.counters["demoted"] == 0 and dram.counters["dropped"] == dram.counters["evictions"] > 0
        assert disk.stats()["blocks"] == 0 and not os.listdir(disk.path)


def test_the_disk_refuses_a_demotion_past_its_backlog_and_releases_the_buffer(tmp_path):
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 8 * BLOCK,
           "disk": {"path": str(tmp_path / "d"), "max_write_backlog": BLOCK}}
    with create_store("dram_disk", cfg) as store:
        disk = store.tier("disk")
        released = []
        with writer_held(disk):
            assert disk.write_block(b"x", rand_block(seed=1), release=released.append)
            assert not disk.write_block(b"y", rand_block(seed=2), release=released.append)
            assert len(released) == 1 and disk.counters["backlog_refused"] == 1
        store.flush()
        assert len(released) == 2 and disk.holds(b"x") and not disk.holds(b"y")


def _disk_only(store, ids, tag="fill"):
    """Push ``ids`` (stored) out of the DRAM onto the disk tier with fresh blocks named ``tag``."""
    for n in range(3):
        put(store, [f"{tag}{n}-{i}" for i in range(2)], seed=100 + n)
    store.flush()
    assert not any(store.head.holds(k.encode()) for k in ids) and all(store.tier("disk").holds(k.encode()) for k in ids)


@pytest.mark.parametrize("mode, want", [("always", [True] * 4), ("never", [True, True, False, False])])
def test_disk_hits_follow_the_configured_mode(tmp_path, mode, want):
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 2 * BLOCK, "demote_ahead": 0.0,
           "disk": {"path": str(tmp_path / "d"), "hits": mode}}
    with create_store("dram_disk", cfg) as store:
        data = put(store, ["p0", "p1"], seed=1)
        _disk_only(store, ["p0", "p1"])
        put(store, ["h0", "h1"], seed=7)  # now in DRAM
        assert store.lookup(["h0", "h1", "p0", "p1"]) == want
        assert store.lookup(["h0", "h1", "p0", "p1"], record=False) == want
        code, out = get(store, "p0")  # an explicit load still reads it: the gate only shapes lookups
        assert code == OK and torch.equal(out, data["p0"])


def test_auto_measures_disk_reads_and_refuses_disk_hits_slower_than_recomputing(tmp_path):
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 2 * BLOCK, "demote_ahead": 0.0,
           "disk": {"path": str(tmp_path / "d")}}
    with create_store("dram_disk", cfg) as store:
        gate = store.slow_hits
        assert gate.mode == "auto"
        data = put(store, ["p0", "p1"], seed=1)
        _disk_only(store, ["p0", "p1"])
        assert store.lookup(["p0", "p1"]) == [True, True], "unknown rates: hits go through"
        planes = [torch.zeros(4, BLOCK, dtype=torch.uint8)]
        assert store.wait(store.load_blocks(["p0", "p1"], planes, [0, 1])) == OK
        assert torch.equal(planes[0][0], data["p0"]) and gate.read_bps and gate.read_bps > 0
        store.note_compute(int(gate.read_bps * 1000), 1.0)  # a model 1000 x faster than this disk
        _disk_only(store, ["p0", "p1"], tag="again")
        assert store.lookup(["p0", "p1"]) == [False, False]
        assert store.stats()["slow_hits"]["refused_lookups"] == 1
