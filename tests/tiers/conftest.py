"""Fixtures per tier; ``store`` runs the contract suite over every one of them."""
import contextlib
import threading

import pytest
import torch

from ucm.tiers import create_store
from ucm.tiers.disk import DiskTier
from ucm.tiers.hbm import HbmTier

BLOCK = 4096
SLOTS = 8


@pytest.fixture
def hbm_tier():
    with HbmTier({"kv_block_size": BLOCK, "hbm_size": BLOCK * SLOTS}) as tier:
        yield tier


@pytest.fixture
def dram_tier():
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": BLOCK * SLOTS}) as tier:
        yield tier


@pytest.fixture
def disk_dir(tmp_path):
    return tmp_path / "spill"


@pytest.fixture
def disk_tier(disk_dir):
    with DiskTier({"kv_block_size": BLOCK, "disk": {"path": str(disk_dir), "max_size": BLOCK * SLOTS}}) as tier:
        yield tier


@pytest.fixture
def chain(disk_dir):
    """HBM (2 blocks) -> DRAM (4 blocks) -> disk (8 blocks)."""
    cfg = {"kv_block_size": BLOCK, "hbm_size": 2 * BLOCK, "max_cache_size": 4 * BLOCK,
           "disk": {"path": str(disk_dir), "max_size": SLOTS * 1024 * BLOCK}}
    with create_store("hbm_dram_disk", cfg) as store:
        yield store


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def dev(request):
    """Where the caller's tensors live: the CPU, and the GPU when there is one (same code paths)."""
    return torch.device(request.param)


@pytest.fixture(params=["hbm_tier", "dram_tier", "disk_tier", "chain"])
def store(request):
    return request.getfixturevalue(request.param)


def rand_block(n: int = BLOCK, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def put(store, ids, seed=0):
    """Dump whole random blocks and commit them; returns {id: bytes tensor}."""
    data = {i: rand_block(seed=seed + n) for n, i in enumerate(ids)}
    assert store.wait(store.dump(list(data), [0] * len(data), list(data.values()))) == 0
    store.commit(list(data))
    return data


def get(store, block_id):
    out = torch.zeros(BLOCK, dtype=torch.uint8)
    code = store.wait(store.load([block_id], [0], [out]))
    return code, out


@contextlib.contextmanager
def writer_held(disk):
    """The disk tier's writer thread waits until the block ends, so files queued meanwhile stay
    pending however slow the machine is (a fixed sleep could let them land first on a slow run)."""
    hold = threading.Event()
    disk._writer.run(hold.wait)
    try:
        yield
    finally:
        hold.set()
