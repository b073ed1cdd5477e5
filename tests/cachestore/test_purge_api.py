"""The edge's authenticated purge API by URL prefix and by host (``POST /.heatcache/purge`` with
{"prefix": ...} / {"host": ...}): every matching object deleted, marked in the catalog, dropped
from the index (misses from then on) and counted; a request naming two targets is refused."""

from __future__ import annotations

import json
from pathlib import Path

from heatcache.services.dnsmasq import Dnsmasq
from tests.dns_redirect.conftest import edge_lab
from tests.dns_redirect.test_edge import post_purge


def test_purge_by_prefix_and_by_host(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    with edge_lab(tmp_path, dnsmasq) as lab:
        base = f"http://origin.lab.test:{lab.port}"
        assert lab.get("/passed.bin")[1]["x-cache"] == "MISS"  # stored in-path as it passed
        assert lab.get("/passed.bin")[1]["x-cache"] == "HIT"
        assert post_purge(lab, json.dumps({"prefix": base + "/pass"}).encode(), None)[0] == 401
        assert post_purge(lab, json.dumps({"prefix": base, "host": "x"}).encode(), "s3cret")[0] == 400
        status, body = post_purge(lab, json.dumps({"prefix": base + "/pass"}).encode(), "s3cret")
        assert status == 200 and json.loads(body) == {"purged": 1, "cache_keys": [base + "/passed.bin"]}
        assert lab.get("/cached.bin")[1]["x-cache"] == "HIT"  # not under the prefix
        status, body = post_purge(lab, json.dumps({"host": "origin.lab.test"}).encode(), "s3cret")
        assert status == 200 and json.loads(body)["cache_keys"] == [base + "/cached.bin"]
        catalog = lab.edge.catalog
        assert catalog is not None
        row = catalog.get(base + "/cached.bin")
        assert row is not None and row.state == "purged" and not (lab.edge.root / row.path).exists()
        assert lab.get("/cached.bin")[1]["x-cache"] == "MISS" and lab.edge.counters["purged"] == 2
