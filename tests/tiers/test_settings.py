"""Config errors fail at construction and name the key and the fix (dict form and Hydra form)."""
import pytest

from ucm.config import build_store, load_config
from ucm.tiers import create_store

OK_CFG = {"kv_block_size": 4096, "max_cache_size": 4 * 4096}


@pytest.mark.parametrize("cfg, message", [
    ({**OK_CFG, "max_cache_siz": 1}, "unknown config key 'max_cache_siz'"),
    ({**OK_CFG, "max_cache_size": "lots"}, "'max_cache_size' must be an integer"),
    ({**OK_CFG, "max_cache_size": 100}, "'max_cache_size' = 100 is below one block"),
    ({"max_cache_size": 1 << 20}, "'kv_block_size' is required"),
    ({**OK_CFG, "eviction": "belady"}, "unknown eviction policy 'belady': choose one of"),
    ({**OK_CFG, "admission": "sometimes"}, "unknown admission policy 'sometimes'"),
    ({**OK_CFG, "eviction": {"name": "lru", "params": {"size": 3}}}, "has no parameter"),
    ({**OK_CFG, "eviction": {"nam": "lru"}}, "unknown config key 'eviction.nam'"),
    ({**OK_CFG, "timeout_s": 0}, "'timeout_s' must be > 0"),
    ({**OK_CFG, "demote_ahead": 1.0}, "'demote_ahead' must be a fraction of the tier's slots in \\[0, 1\\)"),
    ({**OK_CFG, "demote_ahead": -0.1}, "'demote_ahead' must be a fraction"),
])
def test_bad_dict_config_names_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        create_store("UcmDramStore", cfg)


def test_unknown_store_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown store 'dram_ssd'.*dram_disk"):
        create_store("dram_ssd", OK_CFG)


def test_disk_chain_needs_a_path_and_a_cap_of_one_block(tmp_path):
    with pytest.raises(ValueError, match="'disk.max_size' = 10 is below one block"):
        create_store("dram_disk", {**OK_CFG, "disk": {"path": str(tmp_path), "max_size": 10}})
    with pytest.raises(ValueError, match="unknown config key 'disk.pth'"):
        create_store("dram_disk", {**OK_CFG, "disk": {"pth": str(tmp_path)}})


def test_dict_overrides_the_chain_file_deeply(tmp_path):
    store = create_store("dram_disk", {**OK_CFG, "disk": {"path": str(tmp_path / "d")}})
    assert store.tiers[1].max_size == 21474836480, "disk.max_size still comes from conf/store/dram_disk.yaml"
    store.close()


@pytest.mark.parametrize("overrides, message", [
    (["store.kv_block_size=4096", "store.max_cache_siz=1"], "store.max_cache_siz"),
    (["store.kv_block_size=4096", "eviction=nosuch"], "eviction/nosuch"),
    (["store.kv_block_size=4096", "store.max_cache_size=100"], "'max_cache_size' = 100 is below one block"),
    (["store.kv_block_size=big"], "store.kv_block_size"),
    (["store.kv_block_size=4096", "+store.foo=1"], "foo"),
])
def test_bad_hydra_overrides_fail_in_load_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides)


def test_hydra_config_builds_the_chain(tmp_path):
    cfg = load_config(["store.kv_block_size=4096", "store.max_cache_size=16384", "eviction=lru",
                       f"store.disk.path={tmp_path}/d", "store.hbm_size=8192"], store="hbm_dram_disk")
    with build_store(cfg) as store:
        assert [t.name for t in store.tiers] == ["hbm", "dram", "disk"]
        assert store.tiers[1].num_slots == 4 and store.tiers[0].num_slots == 2


def test_disk_write_backlog_is_zero_or_at_least_one_block(tmp_path):
    with pytest.raises(ValueError, match="'disk.max_write_backlog' = 100 is below one block"):
        create_store("dram_disk", {**OK_CFG, "disk": {"path": str(tmp_path), "max_write_backlog": 100}})
    for ok in (0, OK_CFG["kv_block_size"]):
        create_store("dram_disk", {**OK_CFG, "disk": {"path": str(tmp_path), "max_write_backlog": ok}}).close()
