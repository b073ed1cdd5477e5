"""The object writer and quota enforcement (cachestore/store.py) on a real directory and SQLite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cachestore.catalog import open_catalog
from cachestore.policy import PolicyParams
from cachestore.quota import Quota
from cachestore.store import ObjectMeta, ObjectStore, StoreRefused


def make_store(tmp_path: Path, quota: Quota) -> ObjectStore:
    return ObjectStore(tmp_path / "cache", open_catalog(f"sqlite:///{tmp_path / 'c.db'}"), "n1", quota,
                       PolicyParams(half_life_s=3600.0))


def put(store: ObjectStore, key: str, data: bytes, now: float, heat: int = 0) -> list[str]:
    pending = store.begin(key)
    assert pending.add(data)
    result = store.commit_pending(pending, ObjectMeta(key, "h", etag='"v1"', heat=heat, source="fill"), now=now)
    assert result.event.state == "cached" and result.event.sha256 == hashlib.sha256(data).hexdigest()
    assert store.path_of(result.event.path).read_bytes() == data
    return [e.cache_key for e in result.evicted]


def test_write_evict_and_remove(tmp_path: Path) -> None:
    store = make_store(tmp_path, Quota(max_bytes=300, max_object_fraction=0.5))
    try:
        assert put(store, "http://h/a", b"a" * 100, now=0.0) == []
        assert put(store, "http://h/b", b"b" * 100, now=1.0, heat=3) == []
        store.catalog.record_hits({"http://h/a": (2, 10.0)})
        assert put(store, "http://h/c", b"c" * 100, now=11.0) == []
        # full: the never-hit fill c goes before the hit a and the hot prefetch b
        assert put(store, "http://h/d", b"d" * 100, now=12.0) == ["http://h/c"]
        assert store.used_bytes() <= 300
        c = store.catalog.get("http://h/c")
        assert c is not None and c.state == "evicted"
        assert not store.path_of(c.path).exists()
        big = store.begin("http://h/big")
        assert not big.add(b"x" * 151)  # a streamed copy stops at the per-object cap
        big.abort()
        (tmp_path / "big").write_bytes(b"x" * 151)
        with pytest.raises(StoreRefused, match="per-object cap"):
            store.commit_file(tmp_path / "big", "http://h/big", ObjectMeta("http://h/big", "h"))
        gone = store.remove("http://h/a", "purged", now=14.0)
        assert gone is not None and gone.state == "purged"
        assert store.remove("http://h/a", "purged") is None
        assert store.used_bytes() == 200
        assert not [p for p in store.tmp.iterdir() if p.name != ".store.lock"]  # no temporary files left
    finally:
        store.catalog.close()


def test_commit_file_checks_the_size(tmp_path: Path) -> None:
    store = make_store(tmp_path, Quota())
    try:
        src = tmp_path / "download"
        src.write_bytes(b"z" * 50)
        with pytest.raises(StoreRefused, match="differs"):
            store.commit_file(src, "http://h/z", ObjectMeta("http://h/z", "h"), expected_size=51)
        result = store.commit_file(src, "http://h/z", ObjectMeta("http://h/z", "h"), expected_size=50)
        assert store.path_of(result.event.path).read_bytes() == b"z" * 50
        # a newer copy of the same key replaces the old one in place
        src.write_bytes(b"y" * 60)
        result = store.commit_file(src, "http://h/z", ObjectMeta("http://h/z", "h", etag='"2"'))
        row = store.catalog.get("http://h/z")
        assert row is not None and row.size == 60 and row.etag == '"2"'
    finally:
        store.catalog.close()


def test_enforce_shrinks_to_a_lowered_quota(tmp_path: Path) -> None:
    store = make_store(tmp_path, Quota())
    try:
        for i in range(5):
            put(store, f"http://h/{i}", bytes([i]) * 100, now=float(i))
        store.quota = Quota(max_bytes=250)
        events = store.enforce(now=10.0)
        assert [e.state for e in events] == ["evicted"] * 3 and store.used_bytes() == 200
    finally:
        store.catalog.close()


def test_purge_by_key_prefix_and_host(tmp_path: Path) -> None:
    store = make_store(tmp_path, Quota())
    try:
        for key in ("http://a.example/v/1", "http://a.example/v/2", "http://a.example/x", "http://b.example/v/1"):
            pending = store.begin(key)
            pending.add(b"data")
            store.commit_pending(pending, ObjectMeta(key, key.split("/")[2]), now=1.0)
        assert [e.cache_key for e in store.purge(key="http://a.example/x")] == ["http://a.example/x"]
        assert sorted(e.cache_key for e in store.purge(prefix="http://a.example/v/")) == [
            "http://a.example/v/1", "http://a.example/v/2"]
        events = store.purge(host="B.example")
        assert [(e.cache_key, e.state) for e in events] == [("http://b.example/v/1", "purged")]
        assert store.purge(host="b.example") == [] and store.used_bytes() == 0
        with pytest.raises(ValueError):
            store.purge()
    finally:
        store.catalog.close()
