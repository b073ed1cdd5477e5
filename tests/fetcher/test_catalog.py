"""Catalog tests (fetcher/catalog.py): SQLite as a unit, MariaDB on a real private server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fetcher.catalog import Catalog, Entry, open_catalog
from heatcache.services.mariadb import MariaDB


def exercise(cat: Catalog) -> None:
    e = Entry("http://a/x", "http://a/x?t=1", "a", "objects/ab/abc", 10, "f" * 64, '"e"', "Mon", "video/mp4",
              "cached", 1.5)
    cat.upsert(e)
    assert cat.get("http://a/x") == e
    cat.upsert(replace(e, size=11, fetched_at=2.0))
    got = cat.get("http://a/x")
    assert got is not None and got.size == 11
    assert cat.get("http://missing/") is None
    assert [x.cache_key for x in cat.all()] == ["http://a/x"]
    long_key = "http://a/" + "x" * 1500
    cat.upsert(Entry(long_key, long_key, "a", "objects/cd/cde", 1, "0" * 64, "", "", "", "cached", 1.0))
    assert cat.get(long_key) is not None
    cat.record_hits({"http://a/x": (3, 100.0), long_key: (1, 50.0), "http://unknown/": (9, 1.0)})
    cat.record_hits({"http://a/x": (2, 90.0)})
    got = cat.get("http://a/x")
    assert got is not None and (got.hits, got.last_hit) == (5, 100.0)
    cat.upsert(replace(e, size=12))  # a refetch keeps the hit counts
    got = cat.get("http://a/x")
    assert got is not None and got.hits == 5 and got.size == 12
    cat.set_state("http://a/x", "purged")
    got = cat.get("http://a/x")
    assert got is not None and got.state == "purged"


def test_sqlite(tmp_path: Path) -> None:
    cat = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        exercise(cat)
    finally:
        cat.close()


def test_mariadb(mariadb: MariaDB) -> None:
    cat = open_catalog(mariadb.url)
    try:
        exercise(cat)
    finally:
        cat.close()


def test_bad_url() -> None:
    with pytest.raises(ValueError):
        open_catalog("postgres://x/y")
