"""Line parsers and event making (pure): every format gives the same events; bad lines are
counted by reason, never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from heatcache.contract import bucket_of
from heatcache.settings import Settings
from replay.formats import BadLine, parse_clf, parse_csv, parse_jsonl, parse_squid
from replay.trace import EventMaker, batches, read_file
from sniffer.events import ClientHasher
from tests.replay import samples


@pytest.mark.parametrize("fmt", ["clf", "squid", "jsonl", "csv"])
def test_every_format_reads_the_same_requests(fmt: str, base_settings: Settings, tmp_path: Path) -> None:
    path = samples.write(fmt, tmp_path / f"log.{fmt}")
    trace, used = read_file(path, base_settings)
    assert used == fmt
    hasher = ClientHasher(base_settings.client_id_secret.get_secret_value().encode(),
                          base_settings.client_id_rotation_s)
    assert [e.ts for e in trace.events] == [r[0] for r in samples.REQUESTS]
    assert [e.cache_key for e in trace.events] == samples.KEYS  # the key rules drop utm_source
    assert [e.client for e in trace.events] == [hasher.client_id(r[1], r[0]) for r in samples.REQUESTS]
    assert trace.sizes == [r[3] for r in samples.REQUESTS]
    assert trace.statuses == [200] * 4
    assert dict(trace.bad) == samples.BAD[fmt][1]
    assert trace.lines == 4 + len(samples.BAD[fmt][0])
    if fmt in ("clf", "jsonl"):
        assert {e.ua_class for e in trace.events} == {"downloader"}


def test_line_details() -> None:
    line = parse_clf('1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.0" 304 - "r" "Mozilla/5"', "h.test")
    assert (line.ts, line.host, line.target, line.size, line.status, line.user_agent) == (
        971211336.0, "h.test", "/a?b=1", 0, 304, "Mozilla/5")
    with pytest.raises(BadLine, match="no-host"):
        parse_clf('1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 1')
    tunnel = parse_squid("1790000000.000 5 10.0.0.1 TCP_TUNNEL/200 9000 CONNECT secure.test:443 - HIER_DIRECT/x -")
    assert (tunnel.method, tunnel.target) == ("TLS", "https://secure.test:443/")
    iso = parse_jsonl('{"ts": "2026-01-01T00:00:00Z", "client": "c", "host": "a.test", "path": "/p"}')
    assert (iso.ts, iso.host, iso.target) == (1767225600.0, "a.test", "/p")
    assert parse_csv("1790000000,c,http://a.test/x").status == 0  # no size: unknown


def test_events_and_batches_follow_the_sniffer(base_settings: Settings) -> None:
    maker = EventMaker.from_settings(base_settings)
    from replay.formats import LogLine

    ev = maker.event(LogLine(5.0, "10.0.0.1", "GET", "/x?utm_source=1&id=2", "Example.TEST:80"))
    assert (ev.host, ev.path, ev.url, ev.cache_key) == ("example.test", "/x?utm_source=1&id=2",
                                                        "http://example.test/x?utm_source=1&id=2",
                                                        "http://example.test/x?id=2")
    tls = maker.event(LogLine(5.0, "10.0.0.1", "TLS", "https://secure.test:443/"))
    assert (tls.method, tls.host, tls.cache_key) == ("TLS", "secure.test", "https://secure.test/")
    # JSON lines may name a TLS event's host as host + path: the same event, not one without a host
    assert maker.event(parse_jsonl('{"ts": 5, "client": "10.0.0.1", "method": "TLS", "host": "Secure.TEST:443",'
                                   ' "path": "/"}')) == tls
    with pytest.raises(BadLine, match="no-host"):
        maker.event(LogLine(5.0, "10.0.0.1", "TLS", "/"))
    from replay.trace import Trace

    trace = Trace()
    for i in range(10):
        trace.add(ev._replace(ts=float(i) * 0.1, cache_key=f"http://a.test/{i % 3}"), 10, 200)
    out = list(batches(trace, partitions=3, max_events=2, linger_s=0.25))
    assert sum(len(b.events) for b in out) == 10
    assert all(len(b.events) <= 2 and b.sizes == (10,) * len(b.events) for b in out)
    for b in out:
        assert {bucket_of(e.cache_key, 3) for e in b.events} == {b.bucket}
        assert b.events[-1].ts - b.events[0].ts < 0.25


def test_batches_carry_logged_sizes_strictly() -> None:
    from heatcache import contract
    from heatcache.contract import DecodeError, RequestBatch, RequestEvent

    ev = RequestEvent(1.0, "c", "GET", "a.test", "/x", "http://a.test/x", "http://a.test/x")
    batch = RequestBatch(0, (ev, ev), sizes=(10, 0), statuses=(200, 304))
    assert contract.decode(contract.encode(batch), RequestBatch) == batch
    plain = contract.encode(RequestBatch(0, (ev,)))
    assert b"sizes" not in plain and contract.decode(plain, RequestBatch).sizes == ()  # sniffer batches unchanged
    for bad in (b'"sizes": [1]', b'"sizes": [-1, 2]', b'"statuses": ["200", 1]', b'"sizes": [true, 1]'):
        raw = contract.encode(RequestBatch(0, (ev, ev)))[:-1] + b"," + bad + b"}"
        with pytest.raises(DecodeError):
            contract.decode(raw, RequestBatch)


def test_imported_pseudonyms_carry_the_sniffers_network_labels(base_settings: Settings, tmp_path: Path) -> None:
    """A log and a capture of the same requests: the log's importer gives every client the id
    the sniffer's own parser gives it from the capture, network label included (issue 19)."""
    from urllib.parse import urlsplit

    from sniffer.synth import Traffic, tcp_frame

    settings = base_settings.model_copy(update={"console_networks": ("dorms=10.0.0.0/24",)})
    capture = Traffic()
    for i, (_ts, client, url, _size) in enumerate(samples.REQUESTS):
        u = urlsplit(url)
        head = f"GET {u.path}{'?' + u.query if u.query else ''} HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode()
        capture.frames.append(tcp_frame(client, "203.0.113.5", 40000 + i, 80, head))
    pcap = tmp_path / "same.pcap"
    capture.write_pcap(pcap, start_ts=samples.REQUESTS[0][0], step=1.0)  # the samples are 1 s apart
    sniffed, _ = read_file(pcap, settings)
    logged, _ = read_file(samples.write("clf", tmp_path / "log.clf"), settings)
    assert [(e.ts, e.cache_key) for e in sniffed.events] == [(e.ts, e.cache_key) for e in logged.events]
    assert [e.client for e in logged.events] == [e.client for e in sniffed.events]
    assert all(e.client.startswith("dorms/") for e in logged.events)
    assert len({e.client for e in logged.events}) == 2
    # HEATCACHE_CLIENT_ID_NETWORK=false: the bare pseudonyms, as the sniffer publishes them then
    bare, _ = read_file(tmp_path / "log.clf", settings.model_copy(update={"client_id_network": False}))
    assert [e.client for e in bare.events] == [e.client.partition("/")[2] for e in logged.events]


def test_a_capture_counts_its_packets_and_why_they_gave_no_request(base_settings: Settings, tmp_path: Path) -> None:
    """pcap through the sniffer's parser: ``lines`` are packets, ``bad`` the sniffer's drop
    reasons under the text formats' names, only those that happened."""
    from sniffer.synth import Traffic, tcp_frame

    capture = Traffic()
    for i, (method, port) in enumerate((("GET", 80), ("POST", 80), ("GET", 9999), ("GET", 80))):
        head = f"{method} /f{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
        capture.frames.append(tcp_frame("10.0.0.1", "203.0.113.5", 40000 + i, port, head))
    pcap = tmp_path / "c.pcap"
    capture.write_pcap(pcap, start_ts=1_790_000_000.0, step=1.0)
    trace, fmt = read_file(pcap, base_settings)
    assert (fmt, trace.lines, [e.path for e in trace.events]) == ("pcap", 4, ["/f0", "/f3"])
    assert dict(trace.bad) == {"method": 1, "other-port": 1}


def test_lines_the_contract_would_refuse_are_counted_not_fatal(base_settings: Settings) -> None:
    """A time out of range, a field past the contract's caps, a size too large for a batch:
    counted by reason, and every batch made of the rest decodes (one bad event would otherwise
    poison its whole batch downstream)."""
    from heatcache import contract
    from heatcache.contract import RequestBatch
    from replay.trace import read_lines

    ok = '{"ts": 1790000000, "client": "c", "url": "http://a.test/ok"}'
    lines = [ok, '{"ts": 1e300, "client": "c", "url": "http://a.test/z"}', '{"ts": "nan", "client": "c", '
             '"url": "http://a.test/z"}', '{"ts": -5, "client": "c", "url": "http://a.test/z"}',
             '{"ts": 1790000000, "client": "c", "url": "http://a.test/' + "x" * 9000 + '"}',
             '{"ts": 1790000000, "client": "c", "url": "http://a.test/r", "range": "' + "r" * 300 + '"}',
             '{"ts": 1790000000, "client": "c", "url": "http://a.test/s", "size": ' + str(1 << 60) + "}"]
    trace = read_lines(lines, "jsonl", EventMaker.from_settings(base_settings))
    assert dict(trace.bad) == {"bad-time": 3, "bad-event": 2, "bad-size": 1} and len(trace) == 1
    clf = read_lines(['1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] "GET http://a.test/q HTTP/1.0" 200 '
                      + "9" * 20], "clf", EventMaker.from_settings(base_settings))
    assert dict(clf.bad) == {"bad-size": 1}
    for batch in batches(trace, 1):
        assert contract.decode(contract.encode(batch), RequestBatch) == batch
