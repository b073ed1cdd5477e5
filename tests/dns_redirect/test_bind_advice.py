"""A non-root edge on a privileged port: the error names the fixes (capability, port map + NAT,
sysctl); HTTP ports it cannot bind are left out (their hosts stay unsteered) and reported."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest

from dns_redirect.edge import start_listeners
from dns_redirect.ports import bind_advice, unprivileged_port_start
from heatcache.settings import load_settings


def test_advice_only_for_a_privileged_port_without_the_right(tmp_path: Path) -> None:
    text = bind_advice(80, errno.EACCES)
    assert "CAP_NET_BIND_SERVICE" in text and "HEATCACHE_EDGE_PORT_MAP=80:8080" in text
    assert "ip_unprivileged_port_start" in text and "--to-ports 8080" in text
    assert "HEATCACHE_EDGE_TLS_PORTS=8443" in bind_advice(443, errno.EACCES, tls=True)
    assert bind_advice(80, errno.EADDRINUSE) == "" and bind_advice(8080, errno.EACCES) == ""
    assert bind_advice(80, errno.EACCES, unprivileged_start=80) == ""
    assert unprivileged_port_start(str(tmp_path / "missing")) == 1024
    (tmp_path / "start").write_text("80\n")
    assert unprivileged_port_start(str(tmp_path / "start")) == 80


class Unprivileged:
    """The listening side of an Edge as a process without CAP_NET_BIND_SERVICE sees it."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        self.unserved: dict[int, str] = {}
        self.listening: list[int] = []

    async def start(self, host: str, port: int) -> None:
        await self.listen(host, port)

    async def listen(self, host: str, port: int) -> None:
        if port < 1024:
            raise PermissionError(errno.EACCES, "Permission denied")
        self.listening.append(port)


def test_a_port_the_edge_cannot_bind_is_reported_with_the_fix(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(state_dir=tmp_path, edge_port=8080, sniff_ports=(80, 8080), edge_tls_ports=(8443,))
    edge = Unprivileged()
    with caplog.at_level(logging.ERROR, "dns_redirect.edge"):
        served = asyncio.run(start_listeners(edge, s))  # type: ignore[arg-type]
    assert served == [8080] and edge.ports == [8080] and edge.listening == [8080]
    assert "CAP_NET_BIND_SERVICE" in edge.unserved[80] and "not steered" in caplog.text
    assert "HEATCACHE_EDGE_PORT_MAP=80:8080" in caplog.text
    own = load_settings(state_dir=tmp_path, edge_port=80, sniff_ports=(80,))
    with pytest.raises(PermissionError, match=r"HEATCACHE_EDGE_PORT.*CAP_NET_BIND_SERVICE"):
        asyncio.run(start_listeners(Unprivileged(), own))  # type: ignore[arg-type]
