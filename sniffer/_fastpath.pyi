"""Type stub for the compiled fast path (sniffer/_fastpath.c); sniffer/parse.py is its reference."""

from __future__ import annotations

from typing import Any

MAX_HEAD: int

def parse_frame(frame: bytes, linktype: int, /) -> tuple[str, str, int, int, bytes, int, int] | str: ...
def parse_requests(
    payload: bytes, /
) -> tuple[list[tuple[str, str, str, str, str]], list[str], bytes]: ...
def scan(frame: bytes, linktype: int, portmap: bytes, strict: bool, /) -> str | tuple[Any, ...]: ...
def pcap_records(
    buf: Any, offset: int, big_endian: bool, linktype: int, limit: int, /
) -> tuple[list[tuple[bytes, float, int]], int]: ...

class FastPath:
    def __init__(
        self, *, portmap: bytes, counters: dict[str, int], entries: dict[Any, Any], uas: dict[str, str],
        partials: dict[Any, Any], hasher: Any, rotation_s: float, raw: bool, ignored: frozenset[str] | None,
        event_type: type, params: dict[Any, Any], rules_on: bool, ua_class: Any, hold: Any,
        partial_ttl_s: float, flows: dict[bytes, tuple[int, float]], ooo: dict[bytes, Any], max_flows: int,
        flow_ttl_s: float,
    ) -> None: ...
    def events(self, frame: bytes, ts: float, linktype: int, /) -> list[Any] | None: ...
    def events_many(self, records: list[tuple[bytes, float, int]], fallback: Any, /) -> list[Any]: ...
    def pcap_events(
        self, buf: Any, offset: int, big_endian: bool, linktype: int, limit: int, fallback: Any, /
    ) -> tuple[list[Any], int, int, float | None]: ...
