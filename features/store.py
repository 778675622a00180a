"""The Feast store of a gatewise project, configured from ``gatewise.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from config.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["REPO_DIR", "apply_definitions", "feature_store", "repo_config_dict"]

REPO_DIR = Path(__file__).resolve().parent


def repo_config_dict(settings: Settings) -> dict[str, Any]:
    """The effective ``feature_store.yaml`` as a dict (absolute paths)."""
    fs = settings.features
    feast_dir = settings.feast_dir.resolve()
    online: dict[str, Any]
    if fs.online_store == "redis":
        online = {"type": "redis", "connection_string": fs.redis_url}
        if fs.redis_key_ttl_seconds:
            online["key_ttl_seconds"] = fs.redis_key_ttl_seconds
    else:
        online = {"type": "sqlite", "path": str(feast_dir / "online_store.db")}
    registry: Any
    if fs.registry == "sql":
        registry = {
            "registry_type": "sql",
            "path": fs.registry_url,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }
    else:
        registry = {
            "registry_type": "file",
            "path": str(feast_dir / "registry.db"),
            "cache_ttl_seconds": 0,
        }
    return {
        "project": fs.project,
        "provider": "local",
        "registry": registry,
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }


def feature_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for ``settings``; also writes the effective config to
    ``<data_dir>/feast/feature_store.yaml`` so ``feast -c features -f <that file>`` works."""
    from feast import FeatureStore, RepoConfig

    cfg = repo_config_dict(settings)
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    (settings.feast_dir / "feature_store.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return FeatureStore(config=RepoConfig(repo_path=REPO_DIR, **cfg))


def apply_definitions(store: FeatureStore, settings: Settings) -> list[str]:
    """``feast apply`` of ``features/definitions.py`` for this data dir; returns object names."""
    from features.definitions import definitions

    objects = definitions(settings.data_dir)
    store.apply(list(objects.values()))
    return sorted(o.name for o in objects.values())
