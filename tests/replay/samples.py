"""Small access logs of every format, each holding the same requests, plus malformed lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

# (ts, client address, url, bytes): four requests, two clients, one object twice
REQUESTS = [
    (1_790_000_000.0, "10.0.0.1", "http://mirror.test/iso/a.iso", 4000),
    (1_790_000_001.0, "10.0.0.2", "http://mirror.test/iso/a.iso", 4000),
    (1_790_000_002.0, "10.0.0.1", "http://cdn.test/v/b.mp4?utm_source=x", 2500),
    (1_790_000_003.0, "10.0.0.2", "http://cdn.test/pkg/c.deb", 100),
]
KEYS = ["http://mirror.test/iso/a.iso", "http://mirror.test/iso/a.iso", "http://cdn.test/v/b.mp4",
        "http://cdn.test/pkg/c.deb"]
BAD = {  # format -> (malformed lines, reasons they are counted under)
    "clf": (['garbage line', '10.0.0.9 - - [99/Foo/2026:00:00:00 +0000] "GET /x HTTP/1.1" 200 1',
             '10.0.0.9 - - [01/Jan/2026:00:00:00 +0000] "POST http://a.test/x HTTP/1.1" 200 1'],
            {"syntax": 1, "bad-time": 1, "method": 1}),
    "squid": (["1790000000.1 5 10.0.0.9 TCP_MISS", "notatime 5 10.0.0.9 TCP_MISS/200 1 GET http://a.test/ - D -"],
              {"syntax": 1, "bad-time": 1}),
    "jsonl": (['{"ts": 1, "client": "x"', '{"client": "x", "url": "http://a.test/"}',
               '{"ts": 1, "client": "x", "url": "http://bad host/"}'],
              {"not-json": 1, "no-ts": 1, "bad-url": 1}),
    "csv": (["1790000000,10.0.0.9", "1790000000,10.0.0.9,http://a.test/x,big"], {"columns": 1, "bad-size": 1}),
}


def shifted(offset: float) -> list[tuple[float, str, str, int]]:
    return [(ts + offset, c, u, s) for ts, c, u, s in REQUESTS]


def write(fmt: str, path: Path, offset: float = 0.0) -> Path:
    """The sample requests (times moved by ``offset``) in ``fmt``, malformed lines in between."""
    lines: list[str] = []
    for ts, client, url, size in shifted(offset):
        if fmt == "clf":
            when = datetime.fromtimestamp(ts, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
            # CLF has whole seconds: the sample times are whole
            lines.append(f'{client} - - [{when}] "GET {url} HTTP/1.1" 200 {size} "-" "curl/8.5"')
        elif fmt == "squid":
            lines.append(f"{ts:.3f}    12 {client} TCP_MISS/200 {size} GET {url} - HIER_DIRECT/192.0.2.1 text/plain")
        elif fmt == "jsonl":
            lines.append(orjson.dumps({"ts": ts, "client": client, "method": "GET", "url": url, "size": size,
                                       "status": 200, "ua": "curl/8.5"}).decode())
        elif fmt == "csv":
            lines.append(f"{ts},{client},{url},{size}")
    bad = BAD[fmt][0]
    out = lines[:2] + bad + lines[2:]
    if fmt == "csv":
        out.insert(0, "ts,client,url,size")
    path.write_text("\n".join(out) + "\n")
    return path
