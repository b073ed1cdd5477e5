"""Named client networks (per-network savings): parsing and address lookup."""

from __future__ import annotations

from heatcache.networks import NetworkNamer, parse_named_networks


def test_named_networks() -> None:
    spec = ("dorms=10.1.0.0/16|10.9.0.0/16", "library=10.2.0.0/16", "v6=fd00::/8")
    assert [str(n) for n in parse_named_networks(spec)["dorms"]] == ["10.1.0.0/16", "10.9.0.0/16"]
    namer = NetworkNamer(spec)
    assert namer and namer.name("10.9.3.4") == "dorms" and namer.name("10.2.0.1") == "library"
    assert namer.name("fd00::1") == "v6" and namer.name("192.0.2.1") == "" and namer.name("nonsense") == ""
    assert namer.name("10.9.3.4") == "dorms"  # memoized
    assert not NetworkNamer(())
