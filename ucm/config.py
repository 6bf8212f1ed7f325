"""Hydra structured configs: the schema of ``conf/``, composition for code that is not a Hydra app,
and building the configured store.

The schema is ``ucm.tiers.settings.StoreSettings`` (registered here in Hydra's ConfigStore), so a
wrong key or type fails during composition and a size below one block or an unknown policy fails
in ``load_config``, each with a message naming the key.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ucm.tiers import Store, build_store as _build_tiers
from ucm.tiers.settings import StoreSettings, build_policies, parse, validate

CONFIG_MODULE = "ucm.conf"


@dataclass
class UcmConfig:
    store: StoreSettings = field(default_factory=StoreSettings)


ConfigStore.instance().store(name="ucm_schema", node=UcmConfig)


def load_config(overrides: Sequence[str] = (), store: str = "dram", config_name: str = "ucm") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``store=<store>`` and Hydra overrides, then validate."""
    overrides = [f"store={store}", *overrides]
    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app that has ucm.conf on its path
            cfg = compose(config_name, overrides=overrides)
        else:
            with initialize_config_module(CONFIG_MODULE, version_base=None):
                cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"bad ucm config {overrides}: {exc}") from None
    store_settings(cfg)  # fail now, not at first use
    return cfg


def store_settings(cfg: DictConfig) -> StoreSettings:
    """The validated settings of ``cfg.store`` (policies are checked by building them once)."""
    s = validate(parse(StoreSettings, OmegaConf.to_container(cfg.store, resolve=True), "store"))
    build_policies(s, 1)
    return s


def build_store(cfg: DictConfig) -> Store:
    return _build_tiers(store_settings(cfg))
