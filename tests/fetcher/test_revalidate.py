"""Coherence with the origin (fetcher/revalidate.py driven by the fetcher's loop), on a real
broker, a real aria2c and a real HTTP origin that changes its objects: past their freshness,
objects are asked about with conditional requests; unchanged -> 304 and new freshness (no body
sent again), changed -> the new bytes replace the old in one rename (a reader never sees a mix),
deleted -> purged and announced."""

from __future__ import annotations

import hashlib
import time

from pydantic import SecretStr

from cachestore.catalog import open_catalog
from heatcache.services.aria2 import Aria2Daemon
from heatcache.settings import Settings
from tests.fetcher.origin import Route, TestOrigin
from tests.fetcher.test_app import cache_events, hot, publish, running, wait_events

SHORT = {"Cache-Control": "max-age=1"}


def test_stale_objects_are_revalidated(kafka_settings: Settings, aria2: Aria2Daemon) -> None:
    origin = TestOrigin().start()
    old, new = b"old!" * 40_000, b"NEW." * 50_000  # 160 KB, then 200 KB
    origin.routes["/same"] = Route(b"s" * 1000, headers=SHORT)
    origin.routes["/changes"] = Route(old, headers=SHORT)
    origin.routes["/deleted"] = Route(b"d" * 1000, headers=SHORT)
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": aria2.port, "aria2_secret": SecretStr("s3cret"), "allow_private_origins": True,
        "upstream_dns": ("127.0.0.1:9",), "revalidate_interval_s": 0.2, "revalidate_min_s": 0.5})
    urls = {p: origin.url(p) for p in ("/same", "/changes", "/deleted")}
    publish(settings, *[(u.encode(), hot(u)) for u in urls.values()])
    try:
        with running(settings) as fetcher:
            events = wait_events(settings, set(urls.values()))
            assert all(e.state == "cached" for e in events.values()), events
            stored = settings.cache_root / events[urls["/changes"]].path
            assert stored.read_bytes() == old
            origin.routes["/changes"] = Route(new, headers=SHORT)  # the origin changes one object...
            del origin.routes["/deleted"]  # ...and deletes another
            deadline = time.monotonic() + 60
            while True:
                assert stored.read_bytes() in (old, new)  # never a partial or mixed copy
                events = cache_events(settings)
                if (events[urls["/changes"]].sha256 == hashlib.sha256(new).hexdigest()
                        and events[urls["/deleted"]].state == "purged" and fetcher.counters["revalidate.fresh"]):
                    break
                assert time.monotonic() < deadline, (dict(fetcher.counters), events)
                time.sleep(0.1)
    finally:
        origin.stop()
    assert stored.read_bytes() == new and events[urls["/changes"]].size == len(new)
    assert not (settings.cache_root / events[urls["/deleted"]].path).exists()
    assert "gone at the origin (404)" in events[urls["/deleted"]].error
    assert origin.conditional["/same"] >= 1 and origin.sent["/same"] == 1000  # 304s: the body was sent once
    catalog = open_catalog(settings.catalog)
    try:
        same = catalog.get(urls["/same"])
        assert same is not None and same.state == "cached" and same.checked_at > same.fetched_at
        assert same.fresh_until > same.fetched_at  # fresh again after the 304
        changed = catalog.get(urls["/changes"])
        assert changed is not None and changed.size == len(new) and changed.sha256 == hashlib.sha256(new).hexdigest()
        deleted = catalog.get(urls["/deleted"])
        assert deleted is not None and deleted.state == "purged"
    finally:
        catalog.close()
    assert not [p for p in (settings.cache_root / "tmp").iterdir() if p.is_file()]  # no temporary copies left
