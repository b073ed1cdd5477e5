"""`heatcache purge` on a real broker: the objects go, each purge is announced on cache-events."""

from __future__ import annotations

import pytest

from cachestore import open_store
from cachestore.catalog import open_catalog
from cachestore.store import ObjectMeta
from heatcache import contract
from heatcache.cli import main
from heatcache.contract import CacheEvent
from heatcache.kafkautil import read_topic
from heatcache.settings import Settings
from heatcache.stack import settings_env


def test_purge_command(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = open_catalog(kafka_settings.catalog)
    store = open_store(kafka_settings, catalog)
    for key in ("http://a.example/1", "http://a.example/2", "http://b.example/1"):
        pending = store.begin(key)
        pending.add(b"x" * 10)
        store.commit_pending(pending, ObjectMeta(key, key.split("/")[2]))
    for name, value in settings_env(kafka_settings).items():
        monkeypatch.setenv(name, value)
    assert main(["purge", "--host", "a.example"]) == 0
    assert main(["purge", "http://b.example/1"]) == 0
    events = [contract.decode(m.value(), CacheEvent)
              for m in read_topic(kafka_settings.kafka_bootstrap, kafka_settings.topic(contract.CACHE_EVENTS))]
    assert sorted((e.cache_key, e.state) for e in events) == [
        ("http://a.example/1", "purged"), ("http://a.example/2", "purged"), ("http://b.example/1", "purged")]
    assert catalog.cached() == []
    catalog.close()
