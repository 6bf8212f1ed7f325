"""Every eviction x admission policy inside real tiers (DRAM pool and disk), through the store API.

The tiers call the policies as ``ucm.policies.base`` says (protected = blocks being read); this
checks that each policy keeps the tier consistent: never more blocks than slots, every block
the store reports is readable with its bytes.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ucm.policies import ADMISSION_POLICIES, EVICTION_POLICIES  # noqa: E402
from ucm.tiers import create_store  # noqa: E402
from ucm.tiers.disk import DiskTier  # noqa: E402

BLOCK = 1024
SLOTS = 6


def block(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BLOCK,), dtype=torch.uint8, generator=g)


def exercise(store) -> None:
    data = {}
    for step in range(40):
        ids = [f"b{(step * 7 + j) % 15}".encode() for j in range(3)]
        for i in ids:
            data[i] = block(hash(i) & 0xFFFF)
        store.wait(store.dump(ids, [0] * 3, [data[i] for i in ids]))
        store.commit(ids)
        present = store.lookup(list(data))
        assert sum(present) <= SLOTS
        for i, ok in zip(list(data), present):
            if ok:
                out = torch.zeros(BLOCK, dtype=torch.uint8)
                assert store.wait(store.load([i], [0], [out])) == 0
                assert torch.equal(out, data[i])


@pytest.mark.parametrize("admission", sorted(ADMISSION_POLICIES))
@pytest.mark.parametrize("eviction", sorted(EVICTION_POLICIES))
def test_dram_tier(eviction, admission):
    cfg = {"kv_block_size": BLOCK, "max_cache_size": BLOCK * SLOTS,
           "eviction": {"name": eviction, "params": {}}, "admission": {"name": admission, "params": {}}}
    with create_store("UcmDramStore", cfg) as store:
        exercise(store)


@pytest.mark.parametrize("eviction", sorted(EVICTION_POLICIES))
def test_disk_tier(eviction, tmp_path):
    cfg = {"kv_block_size": BLOCK, "disk": {"path": str(tmp_path / "d"), "max_size": BLOCK * SLOTS},
           "eviction": {"name": eviction, "params": {}}}
    with DiskTier(cfg) as tier:
        exercise(tier)
