"""The sniffer against a reference nobody here wrote: tshark (Wireshark's dissectors) on a
generated capture of 50k+ requests mixed with non-HTTP traffic, IPv6, VLAN tags, pipelining,
heads cut across segments and TLS ClientHellos. Both the compiled fast path (with its own pcap
reader) and the Python reference must equal it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from heatcache.settings import load_settings
from sniffer.app import build_parser
from sniffer.capture import pcap_event_batches, pcap_frames
from sniffer.events import TLS_METHOD
from sniffer.synth import generate

pytestmark = pytest.mark.integration  # runs the tshark program


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    traffic = generate(55_000, seed=11)
    path = tmp_path_factory.mktemp("pcap") / "gateway.pcap"
    traffic.write_pcap(path)
    return path, traffic


@pytest.fixture(scope="module")
def tshark_result(capture: tuple[Path, object]) -> tuple[list[tuple[str, str, str]], list[str]]:
    return tshark_requests(capture[0])


def tshark_requests(path: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is part of the test set-up (Debian package tshark)"
    proc = subprocess.run(
        [tshark, "-n", "-r", str(path), "-Y", "http.request or tls.handshake.type == 1", "-T", "fields",
         "-E", "aggregator=|", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri",
         "-e", "tls.handshake.extensions_server_name"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    http, tls = [], []
    for line in proc.stdout.splitlines():
        methods, hosts, uris, sni = line.split("\t")
        if sni:
            tls.append(sni)
            continue
        http.extend(zip(methods.split("|"), hosts.split("|"), uris.split("|"), strict=True))
    return [r for r in http if r[0] in ("GET", "HEAD")], tls


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_sniffer_equals_tshark(capture: tuple[Path, object],
                               tshark_result: tuple[list[tuple[str, str, str]], list[str]], compiled: bool) -> None:
    path, traffic = capture
    parser = build_parser(load_settings(client_id_secret="x", sniff_compiled=compiled))
    assert parser.compiled is compiled
    ours, tls = [], []
    # compiled: pcap_event_batches, as `heatcache sniff` reads a file; reference: frame by frame
    events = ([ev for evs, _last in pcap_event_batches(path, parser) for ev in evs] if compiled else
              [ev for frame, ts, linktype in pcap_frames(path, False) for ev in parser.events(frame, ts, linktype)])
    for ev in events:
        if ev.method == TLS_METHOD:
            tls.append(ev.host)
        else:
            ours.append((ev.method, ev.host, ev.path))
    parser.flush()
    ref_http, ref_tls = tshark_result
    assert len(ref_http) >= 50_000
    assert ours == ref_http
    assert tls == ref_tls and len(tls) > 1000
    assert ours == [r for r in traffic.requests if r[0] in ("GET", "HEAD")]  # type: ignore[attr-defined]
    c = parser.counters
    assert c["requests"] == len(ours) and c["reassembled"] > 500 and c["drop.method"] > 500
    assert c["drop.incomplete-head"] == 0 and c["drop.reassembly-gap"] == 0
