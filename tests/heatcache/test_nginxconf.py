"""Unit tests for the nginx front's config (heatcache/nginxconf.py) and its setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from heatcache.nginxconf import server_block, standalone
from heatcache.settings import SettingsError, load_settings


def test_server_block_aliases_the_cache_root_internally(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, edge_accel_prefix="/.heatcache/cache/", edge_port=8081)
    block = server_block(settings, "0.0.0.0:80")
    assert "listen 0.0.0.0:80 reuseport;" in block and "server 127.0.0.1:8081;" in block
    internal = block[block.index("location /.heatcache/cache/ {"):]
    assert "internal;" in internal and f"alias {settings.cache_root.resolve()}/;" in internal
    assert block.count("{") == block.count("}")
    whole = standalone(settings, "127.0.0.1:8080", "/tmp/x")
    assert whole.count("{") == whole.count("}") and "pid /tmp/x/nginx.pid;" in whole


def test_the_prefix_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HEATCACHE_EDGE_ACCEL_PREFIX"):
        server_block(load_settings(state_dir=tmp_path), "80")
    for bad in ("cache/", "/cache", "/a b/"):
        with pytest.raises(SettingsError, match="EDGE_ACCEL_PREFIX"):
            load_settings(edge_accel_prefix=bad)
