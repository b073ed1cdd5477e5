"""Catalog tests (cachestore/catalog.py): SQLite as a unit, MariaDB on a real private server.
Both run the same checks, including what broke the unversioned schema on MariaDB (a 402-character
ETag, keys sharing their first 255 bytes) and the migration of an old ``objects`` table."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pymysql
import pytest

from cachestore.catalog import SCHEMA_VERSION, Admission, Catalog, CatalogUnavailable, Entry, open_catalog
from heatcache.services.mariadb import MariaDB


def exercise(cat: Catalog) -> None:
    assert cat.schema_version() == SCHEMA_VERSION
    e = Entry("http://a/x", "http://a/x?t=1", "a", "objects/ab/abc", 10, "f" * 64, '"e"', "Mon", "video/mp4",
              "cached", 1.5, heat=3, fresh_until=99.0, cache_control="max-age=60")
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
    assert [x.cache_key for x in cat.cached()] == [long_key]
    assert cat.cached_bytes() == 1  # the purged row's 12 bytes are not counted
    assert {x.cache_key for x in cat.by_host("a")} == {long_key, "http://a/x"}
    # revalidation: stale (fresh_until <= now, 0 = unknown) and not asked within the interval, most stale first
    for key, until in (("http://b/1", 50.0), ("http://b/2", 500.0)):
        cat.upsert(Entry(key, key, "b", "objects/b", 1, "0" * 64, '"o"', "", "", "cached", 1.0, fresh_until=until,
                         checked_at=1.0))
    assert [x.cache_key for x in cat.due(100.0, 10.0, 10)] == [long_key, "http://b/1"]
    assert [x.cache_key for x in cat.due(100.0, 10.0, 1)] == [long_key]
    assert [x.cache_key for x in cat.due(5.0, 10.0, 10)] == []  # asked too recently
    cat.refresh("http://b/1", 900.0, 95.0, '"n"', "Tue", "max-age=800")
    got = cat.get("http://b/1")
    assert got is not None and (got.fresh_until, got.checked_at, got.etag, got.last_modified, got.cache_control,
                                got.size) == (900.0, 95.0, '"n"', "Tue", "max-age=800", 1)
    assert [x.cache_key for x in cat.due(100.0, 10.0, 10)] == [long_key]
    # the fetcher's admissions (migration 3): one row per key, replaced, long keys and ids kept whole
    assert cat.get_admission(long_key) is None
    first = Admission(long_key, long_key + "@1.500000", "fetching", 0, 0.0, "", 1.5)
    cat.put_admission(first)
    assert cat.get_admission(long_key) == first
    failed = replace(first, state="failed", failures=2, retry_after=300.5, reason="origin answered 500" * 20)
    cat.put_admission(failed)
    assert cat.get_admission(long_key) == failed and cat.get_admission("http://a/x") is None


def hostile_values(cat: Catalog) -> None:
    """What origins send, stored without truncation; long keys stay distinct."""
    etag = '"' + "e" * 400 + '"'  # 402 characters
    ctype = "video/mp4; " + "p=" * 300
    prefix = "http://a/" + "k" * 300
    keys = [prefix + "1", prefix + "2", "http://a/snow-\u2603-\U0001f600"]
    for i, key in enumerate(keys):
        cat.upsert(Entry(key, key + "?x", "a", f"objects/0{i}/x", i, "0" * 64, etag, "L" * 300, ctype, "cached", 1.0))
    for key in keys:
        got = cat.get(key)
        assert got is not None and got.cache_key == key and got.url == key + "?x"
        assert got.etag == etag and got.content_type == ctype and got.last_modified == "L" * 300
    assert len({e.cache_key for e in cat.all()} & set(keys)) == 3


def test_sqlite(tmp_path: Path) -> None:
    cat = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        exercise(cat)
        hostile_values(open_catalog(f"sqlite:///{tmp_path / 'd.db'}"))
    finally:
        cat.close()


def test_sqlite_migrates_the_old_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE objects (cache_key TEXT PRIMARY KEY, url TEXT, host TEXT, path TEXT, size INTEGER,"
               " sha256 TEXT, etag TEXT, last_modified TEXT, content_type TEXT, state TEXT, fetched_at REAL,"
               " hits INTEGER DEFAULT 0, last_hit REAL DEFAULT 0)")
    db.execute("INSERT INTO objects VALUES ('http://a/old', 'http://a/old', 'a', 'objects/aa/b', 5, 'x', '', '',"
               " 'text/plain', 'cached', 3.0, 7, 4.0)")
    db.commit()
    db.close()
    cat = open_catalog(f"sqlite:///{path}")
    try:
        got = cat.get("http://a/old")
        assert got is not None and (got.size, got.hits, got.last_hit, got.fresh_until) == (5, 7, 4.0, 0.0)
        assert cat.schema_version() == SCHEMA_VERSION
    finally:
        cat.close()
    again = open_catalog(f"sqlite:///{path}")  # a second start finds nothing to do
    try:
        assert len(again.all()) == 1
    finally:
        again.close()


def test_mariadb(mariadb: MariaDB) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database="heatcache", autocommit=True)
    with conn, conn.cursor() as cur:  # the unversioned table of before, with one row
        cur.execute("CREATE TABLE objects (cache_key VARBINARY(2048) NOT NULL, url TEXT, host VARCHAR(255),"
                    " path VARCHAR(255), size BIGINT, sha256 CHAR(64), etag VARCHAR(255), last_modified VARCHAR(64),"
                    " content_type VARCHAR(255), state VARCHAR(16), fetched_at DOUBLE, hits BIGINT DEFAULT 0,"
                    " last_hit DOUBLE DEFAULT 0, PRIMARY KEY (cache_key(255)))")
        cur.execute("INSERT INTO objects VALUES ('http://b/old', 'http://b/old', 'b', 'objects/bb/c', 6, 'y', '', '',"
                    " '', 'cached', 2.0, 1, 2.5)")
        cur.execute("CREATE DATABASE fresh")
    cat = open_catalog(mariadb.url)
    try:
        old = cat.get("http://b/old")
        assert old is not None and (old.size, old.hits, old.cache_control) == (6, 1, "")
        assert cat.schema_version() == SCHEMA_VERSION
        hostile_values(cat)
    finally:
        cat.close()
    fresh = open_catalog(mariadb.url.rsplit("/", 1)[0] + "/fresh")
    try:
        exercise(fresh)
    finally:
        fresh.close()


def test_mariadb_outage_is_an_error_not_a_crash(mariadb: MariaDB) -> None:
    cat = open_catalog(mariadb.url)
    try:
        cat.upsert(Entry("http://c/1", "http://c/1", "c", "objects/cc/1", 1, "0" * 64, "", "", "", "cached", 1.0))
        mariadb.proc.kill() if mariadb.proc else None
        mariadb.proc.wait() if mariadb.proc else None
        with pytest.raises(CatalogUnavailable):
            cat.get("http://c/1")
    finally:
        cat.close()


def test_bad_url() -> None:
    with pytest.raises(ValueError):
        open_catalog("postgres://x/y")
