"""Disk spill tier: files, checksums, warm restart, permissions, its own byte cap."""
import os
import stat

import pytest
import torch

from ucm.tiers import NOT_FOUND, OK
from ucm.tiers.disk import DiskTier
from tests.tiers.conftest import BLOCK, SLOTS, get, put, rand_block, writer_held


def _files(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".blk"))


def test_directory_and_files_are_owner_only(disk_tier, disk_dir):
    put(disk_tier, ["a"])
    assert stat.S_IMODE(os.stat(disk_dir).st_mode) == 0o700
    (f,) = _files(disk_dir)
    assert stat.S_IMODE(os.stat(disk_dir / f).st_mode) == 0o600


def test_ids_never_name_paths_outside_the_directory(disk_tier, disk_dir, tmp_path):
    evil = "../../../../tmp/evil"
    put(disk_tier, [evil, "/etc/passwd"])
    assert len(_files(disk_dir)) == 2
    assert not (tmp_path / "evil").exists()
    assert disk_tier.lookup([evil]) == [True]


def test_byte_cap_is_never_exceeded(disk_tier, disk_dir):
    for i in range(3 * SLOTS):
        put(disk_tier, [f"b{i}"], seed=i)
        size = sum(os.path.getsize(disk_dir / f) for f in _files(disk_dir))
        assert size <= SLOTS * BLOCK
        assert disk_tier.stats()["used_bytes"] == size
    assert disk_tier.stats()["evictions"] > 0


def test_corrupt_file_is_a_miss_never_wrong_bytes(disk_tier, disk_dir):
    put(disk_tier, ["a"])
    (f,) = _files(disk_dir)
    raw = bytearray((disk_dir / f).read_bytes())
    raw[-100] ^= 0xFF
    (disk_dir / f).write_bytes(bytes(raw))
    code, out = get(disk_tier, "a")
    assert code == NOT_FOUND
    assert not out.any(), "no byte of a corrupt block reaches the caller"
    assert disk_tier.lookup(["a"]) == [False]
    assert _files(disk_dir) == [], "the corrupt file is removed"


def test_truncated_file_is_a_miss(disk_tier, disk_dir):
    put(disk_tier, ["a"])
    (f,) = _files(disk_dir)
    raw = (disk_dir / f).read_bytes()
    (disk_dir / f).write_bytes(raw[: len(raw) // 2])
    assert get(disk_tier, "a")[0] == NOT_FOUND


def test_missing_file_is_a_miss(disk_tier, disk_dir):
    put(disk_tier, ["a"])
    (f,) = _files(disk_dir)
    os.unlink(disk_dir / f)
    assert get(disk_tier, "a")[0] == NOT_FOUND


def test_warm_restart_finds_committed_blocks(disk_dir):
    cfg = {"kv_block_size": BLOCK, "disk": {"path": str(disk_dir), "max_size": SLOTS * BLOCK}}
    with DiskTier(cfg) as first:
        data = put(first, ["x", "y"])
        first.wait(first.dump(["uncommitted"], [0], [rand_block()]))
    with DiskTier(cfg) as second:
        assert second.lookup(["x", "y", "uncommitted"]) == [True, True, False]
        for k in ("x", "y"):
            code, out = get(second, k)
            assert code == OK and torch.equal(out, data[k])


def test_restart_removes_stray_temp_files_and_foreign_files(disk_dir):
    cfg = {"kv_block_size": BLOCK, "disk": {"path": str(disk_dir), "max_size": SLOTS * BLOCK}}
    with DiskTier(cfg) as first:
        put(first, ["x"])
    (disk_dir / "abc.blk.123.tmp").write_bytes(b"half a write")
    (disk_dir / ("0" * 64 + ".blk")).write_bytes(b"garbage")
    with DiskTier(cfg) as second:
        assert second.lookup(["x"]) == [True]
    assert sorted(os.listdir(disk_dir)) == _files(disk_dir) and len(_files(disk_dir)) == 1


def test_restart_with_a_smaller_cap_evicts_down_to_it(disk_dir):
    big = {"kv_block_size": BLOCK, "disk": {"path": str(disk_dir), "max_size": SLOTS * BLOCK}}
    with DiskTier(big) as first:
        put(first, [f"b{i}" for i in range(SLOTS - 1)])
    small = {"kv_block_size": BLOCK, "disk": {"path": str(disk_dir), "max_size": 3 * (BLOCK + 100)}}
    with DiskTier(small) as second:
        assert second.stats()["blocks"] <= 3
        assert len(_files(disk_dir)) == second.stats()["blocks"]


def _views(parts=4):
    return [torch.zeros(BLOCK // parts, dtype=torch.uint8) for _ in range(parts)]


def test_read_into_fills_the_callers_views_exactly(disk_tier):
    data = put(disk_tier, ["r"])["r"]
    views = _views()
    assert disk_tier.read_into(b"r", views) is True
    assert torch.equal(torch.cat(views), data)
    assert disk_tier.read_into(b"absent", _views()) is False
    with pytest.raises(ValueError, match="kv_block_size"):
        disk_tier.read_into(b"r", _views()[:3])


def test_read_into_of_a_corrupt_or_overlong_file_is_a_miss(disk_tier, disk_dir):
    put(disk_tier, ["a", "b"])
    fa, fb = (disk_dir / (disk_tier.file_of(k).rsplit("/", 1)[1]) for k in (b"a", b"b"))
    raw = bytearray(fa.read_bytes())
    raw[-1] ^= 0xFF
    fa.write_bytes(bytes(raw))
    fb.write_bytes(fb.read_bytes() + b"x")
    for key in (b"a", b"b"):
        views = _views()
        assert disk_tier.read_into(key, views) is False
        assert disk_tier.lookup([key.decode()]) == [False]
    assert _files(disk_dir) == []


def test_read_into_of_a_block_whose_file_is_pending_copies_its_bytes(disk_tier):
    """A demoted block is hittable before its file lands (``write_block`` in the background)."""
    data = rand_block(seed=5)
    strided = data.view(4, BLOCK // 4).t().contiguous().t()  # same bytes in order, not contiguous
    assert not strided.is_contiguous() and torch.equal(strided.reshape(-1), data)
    released = []
    with writer_held(disk_tier):
        assert disk_tier.write_block(b"p", strided, release=released.append)
        assert b"p" in disk_tier._writing
        views = _views()
        assert disk_tier.read_into(b"p", views) and torch.equal(torch.cat(views), data)
    disk_tier.flush()
    assert released and disk_tier.read_into(b"p", views) and torch.equal(torch.cat(views), data)
