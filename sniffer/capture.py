"""Packet sources: a live interface (scapy's AF_PACKET socket with a kernel BPF filter, read
through a PACKET_MMAP ring when sniffer/_ring.c is built) and pcap/pcapng files. Both yield raw
frames; parsing happens on bytes, never on scapy trees."""

from __future__ import annotations

import contextlib
import mmap
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sniffer.parse import LINKTYPE_ETHERNET

if TYPE_CHECKING:
    from heatcache.contract import RequestEvent
    from sniffer.events import FrameParser

Frame = tuple[bytes, float, int]  # (frame bytes, capture time, linktype)


def bpf_filter(ports: tuple[int, ...], tls_ports: tuple[int, ...] = ()) -> str:
    """Only what can hold a request reaches user space: TCP segments with payload to the HTTP
    ports, clients' SYNs to them (each flow's first sequence number, so a retransmission or an
    out-of-order segment is told from new data), fragments of TCP datagrams (any port: only the
    first fragment names it), and TLS handshake records whose first message is a ClientHello to
    the TLS ports."""
    http_ports = " or ".join(f"dst port {p}" for p in ports)
    # IPv4: total length - IP header - TCP header > 0. IPv6 (no extension headers): payload
    # length - TCP header > 0. VLAN-tagged frames are matched by the same test after "vlan".
    v4 = "(ip and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) > 0))"
    v6 = "(ip6 and ((ip6[4:2] - ((ip6[40+12]&0xf0)>>2)) > 0))"
    syn = "((ip and (tcp[13] & 0x12) = 0x02) or (ip6 and (ip6[40+13] & 0x12) = 0x02))"
    base = f"(tcp and ({http_ports}) and ({v4} or {v6} or {syn}))"
    frag = "(ip and ip[9] = 6 and (ip[6:2] & 0x3fff) != 0) or (ip6 and ip6[6] = 44 and ip6[40] = 6)"
    base = f"({base} or {frag})"
    if tls_ports:
        tls = " or ".join(f"dst port {p}" for p in tls_ports)
        hello4 = "(ip and tcp[((tcp[12]&0xf0)>>2)] = 0x16 and tcp[((tcp[12]&0xf0)>>2)+5] = 1)"
        hello6 = "(ip6 and ip6[40+((ip6[40+12]&0xf0)>>2)] = 0x16 and ip6[45+((ip6[40+12]&0xf0)>>2)] = 1)"
        base = f"({base} or (tcp and ({tls}) and ({hello4} or {hello6})))"
    return f"{base} or (vlan and {base})"


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread inside network namespace ``name`` (``ip netns`` name), then
    come back. Sockets opened inside stay in that namespace: the sniffer captures on a gateway
    namespace's interface while its Kafka client lives in the host's."""
    if not name:
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    with open("/proc/thread-self/ns/net") as home, open(f"/var/run/netns/{name}") as target:
        if libc.setns(target.fileno(), clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {name!r} failed")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), clone_newnet) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")


class LiveCapture:
    """Frames from one interface. Packets the host itself sends are skipped unless asked for
    (on loopback every packet is seen twice: once outgoing, once incoming)."""

    def __init__(self, iface: str, ports: tuple[int, ...], outgoing: bool = False,
                 tls_ports: tuple[int, ...] = (), netns: str = "", ring: bool | None = None) -> None:
        from scapy.arch.linux import L2ListenSocket

        self.iface = iface
        self.outgoing = outgoing
        with in_netns(netns):
            self._sock = L2ListenSocket(iface=iface, filter=bpf_filter(ports, tls_ports))
        self._raw: socket.socket = self._sock.ins
        self._raw.settimeout(0.2)
        # A larger kernel buffer absorbs bursts while Python is busy.
        self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        # PACKET_MMAP (TPACKET_V3, sniffer/_ring.c) when built: a block of frames per read instead
        # of a recvfrom per frame, 16 MiB of ring for bursts. ring=False keeps recvfrom.
        self._ring = None
        if ring is None or ring:
            try:
                from sniffer import _ring
            except ImportError:
                if ring:
                    raise
            else:
                self._ring = _ring.Ring(self._raw.fileno(), outgoing=outgoing)

    def batches(self, stop: object) -> Iterator[list[Frame]]:
        """Lists of frames until ``stop.is_set()``; an empty list on idle so callers can flush.
        From the ring, times are the kernel's receive timestamps."""
        if self._ring is None:
            for frame in self.frames(stop):
                yield [] if frame is None else [frame]
            return
        is_set, read = stop.is_set, self._ring.read  # type: ignore[attr-defined]
        while not is_set():
            yield read(200)

    def frames(self, stop: object) -> Iterator[Frame | None]:
        """Yield frames until ``stop.is_set()``; yields None on idle so callers can flush."""
        if self._ring is not None:
            for batch in self.batches(stop):
                if batch:
                    yield from batch
                else:
                    yield None
            return
        is_set = stop.is_set  # type: ignore[attr-defined]
        raw = self._raw
        while not is_set():
            try:
                data, addr = raw.recvfrom(65535)
            except TimeoutError:
                yield None
                continue
            except OSError:
                if is_set():
                    return
                raise
            if addr[2] == socket.PACKET_OUTGOING and not self.outgoing:
                continue
            yield data, time.time(), LINKTYPE_ETHERNET

    def kernel_drops(self) -> int:
        """Packets the kernel dropped since the last call (PACKET_STATISTICS)."""
        try:
            stats = self._raw.getsockopt(263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS
        except OSError:
            return 0
        return int.from_bytes(stats[4:8], "little")

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
        self._sock.close()


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": False, b"\xa1\xb2\xc3\xd4": True}  # microsecond pcap -> big-endian?


def pcap_frames(path: Path, compiled: bool | None = None) -> Iterator[Frame]:
    """Frames of a pcap or pcapng file (no dissection), one at a time (see pcap_batches)."""
    for batch in pcap_batches(path, compiled):
        yield from batch


def pcap_batches(path: Path, compiled: bool | None = None, size: int = 4096) -> Iterator[list[Frame]]:
    """Frames of a pcap or pcapng file in lists of up to ``size``, for FrameParser.events_many.

    Classic microsecond pcap is read by the compiled fast path straight from a memory map when it
    is built (``compiled`` None or True); pcapng, nanosecond or gzipped captures, and
    ``compiled=False``, go through scapy's RawPcapReader, the reference: same frames, same times.
    """
    from sniffer.events import compiled_available

    if compiled is None:
        compiled = compiled_available()
    if compiled:
        with open(path, "rb") as fh:
            head = fh.read(24)
            if len(head) == 24 and head[:4] in _PCAP_MAGIC:
                yield from _pcap_batches_compiled(fh, _PCAP_MAGIC[head[:4]], head, size)
                return
    from scapy.utils import RawPcapReader

    batch: list[Frame] = []
    with RawPcapReader(str(path)) as reader:  # handles pcapng too
        linktype = int(getattr(reader, "linktype", LINKTYPE_ETHERNET))
        for data, meta in reader:
            ts = _ts(meta)
            lt = int(getattr(meta, "linktype", None) or linktype)
            batch.append((data, ts, lt))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def pcap_event_batches(path: Path, parser: FrameParser, size: int = 4096) -> Iterator[tuple[list[RequestEvent],
                                                                                          float]]:
    """The events of a capture file through ``parser``, a batch of up to ``size`` frames at a
    time, each with the capture time of its last frame. On the compiled path classic pcap
    frames go from the memory map into C without a Python object per frame; anything else is
    pcap_batches + events_many."""
    if parser.compiled:
        with open(path, "rb") as fh:
            head = fh.read(24)
            if len(head) == 24 and head[:4] in _PCAP_MAGIC:
                big_endian = _PCAP_MAGIC[head[:4]]
                linktype = int.from_bytes(head[20:24], "big" if big_endian else "little")
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    offset = 24
                    while True:
                        events, offset, count, last = parser.events_from_pcap(mm, offset, big_endian, linktype, size)
                        if not count or last is None:
                            return
                        yield events, last
                return
    for batch in pcap_batches(path, parser.compiled, size):
        yield parser.events_many(batch), batch[-1][1]


def _pcap_batches_compiled(fh: BinaryIO, big_endian: bool, head: bytes, size: int) -> Iterator[list[Frame]]:
    from sniffer import _fastpath

    linktype = int.from_bytes(head[20:24], "big" if big_endian else "little")
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        offset = 24
        while True:
            # one C call per batch instead of a read per frame
            records, offset = _fastpath.pcap_records(mm, offset, big_endian, linktype, size)
            if not records:
                return
            yield records


def _ts(meta: object) -> float:
    if hasattr(meta, "sec"):
        usec = getattr(meta, "usec", 0)
        return float(meta.sec) + float(usec) / 1e6  # type: ignore[attr-defined]
    tshigh = getattr(meta, "tshigh", 0)
    tslow = getattr(meta, "tslow", 0)
    tsresol = getattr(meta, "tsresol", 1_000_000)
    return ((tshigh << 32) + tslow) / float(tsresol)
