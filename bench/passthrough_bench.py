"""bench/passthrough: HTTPS through the cache node's TLS passthrough (dns_redirect/passthrough.py,
run as `heatcache edge` runs it: uvloop, one process) and through haproxy (one thread, SNI
routing with req_ssl_sni, the usual SNI-proxy set-up), both to the same nginx HTTPS origin, in
the same run: wrk -t2 -c32 fetching a 1 MiB object over kept-alive connections. Last line:
``passthrough: ... ratio=<passthrough/haproxy bytes per second> (reference haproxy ...)``.

The SNI name is ``localhost`` (wrk sends its URL's host as SNI and resolves it itself); the
passthrough resolves it through a dnsmasq upstream to the origin's address, 127.0.0.2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _procs import Procs, wrk  # bench/_procs.py (sets up sys.path)

from heatcache.lab import ORIGIN_IP, self_signed
from heatcache.netutil import free_port, port_is_free, wait_for_port
from heatcache.services.dnsmasq import Dnsmasq

NAME = "localhost"

RELAY = r"""
import asyncio, sys
from dns_redirect.index import CacheIndex
from dns_redirect.passthrough import TlsPassthrough
from heatcache.contract import CacheEvent
from heatcache.settings import load_settings
port, upstream = int(sys.argv[1]), sys.argv[2]
settings = load_settings(upstream_dns=(upstream,), allow_private_origins=True, edge_tls_ports=(port,))
index = CacheIndex()
index.apply(CacheEvent("http://localhost/steered", "cached", path="objects/00/x"))
async def main():
    tls = TlsPassthrough(settings, index)
    await tls.start("127.0.0.1", (port,))
    print("ready", flush=True)
    await asyncio.Event().wait()
import uvloop
uvloop.run(main())
"""

ORIGIN = """    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {ip}:{p1} ssl;
        listen {ip}:{p2} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
    }}
"""

HAPROXY = """global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend origin if {{ req_ssl_sni -i {name} }}
backend origin
    server o {ip}:{port}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def two_ports() -> tuple[int, int]:
    """Ports free on 127.0.0.1 (the relays) and on the origin's address (the same port behind)."""
    out: list[int] = []
    while len(out) < 2:
        p = free_port()
        if p not in out and port_is_free(p, ORIGIN_IP):
            out.append(p)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 3 if args.quick else 5
    rounds = 3 if args.quick else 6
    with Procs("bench-passthrough-") as procs:
        work = procs.work
        dns = procs.service(Dnsmasq({NAME: ORIGIN_IP}))
        assert isinstance(dns, Dnsmasq)
        dns.start()
        www = work / "www"
        www.mkdir()
        (www / "1m.bin").write_bytes(os.urandom(1 << 20))
        cert, key = self_signed(work / "pki", [NAME])
        ours, theirs = two_ports()
        procs.nginx(ORIGIN.format(ip=ORIGIN_IP, p1=ours, p2=theirs, cert=cert, key=key, www=www))
        (work / "haproxy.cfg").write_text(HAPROXY.format(port=theirs, name=NAME, ip=ORIGIN_IP))
        haproxy = procs.spawn(["haproxy", "-db", "-f", str(work / "haproxy.cfg")], stdout=subprocess.DEVNULL)
        relay = procs.python(RELAY, str(ours), dns.upstream)
        for ip, port in ((ORIGIN_IP, ours), (ORIGIN_IP, theirs), ("127.0.0.1", theirs)):
            assert wait_for_port(ip, port, 10), f"nothing on {ip}:{port}"
        time.sleep(0.3)
        got: dict[str, list[tuple[float, float]]] = {"passthrough": [], "haproxy": []}
        cpu = {"passthrough": 0.0, "haproxy": 0.0}
        pids = {"passthrough": relay.pid, "haproxy": haproxy.pid}
        for _ in range(rounds):  # short alternating halves: drift on a shared machine hits both alike
            for name, port in (("passthrough", ours), ("haproxy", theirs)):
                before = cpu_seconds(pids[name])
                got[name].append(wrk(f"https://{NAME}:{port}/1m.bin", seconds))
                cpu[name] += cpu_seconds(pids[name]) - before
        p_rps = sum(r for r, _ in got["passthrough"]) / rounds
        p_bps = sum(b for _, b in got["passthrough"]) / rounds
        h_rps = sum(r for r, _ in got["haproxy"]) / rounds
        h_bps = sum(b for _, b in got["haproxy"]) / rounds
        ratio = p_bps / h_bps if h_bps else 0.0
        # CPU seconds per GB relayed: still compares the two when wrk and the origin saturate the cores
        p_cpu = cpu["passthrough"] / max(1e-9, p_bps * seconds * rounds / 1e9)
        h_cpu = cpu["haproxy"] / max(1e-9, h_bps * seconds * rounds / 1e9)
        print(f"  1 MiB over HTTPS: passthrough {p_rps:,.0f} req/s ({p_bps / 1e9:.2f} GB/s, {p_cpu:.2f} CPU s/GB), "
              f"haproxy {h_rps:,.0f} req/s ({h_bps / 1e9:.2f} GB/s, {h_cpu:.2f} CPU s/GB)")
        version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2]
        cpu_ratio = h_cpu / max(p_cpu, 1e-9)
        print(f"passthrough: {p_bps / 1e6:,.0f} MB/s vs {h_bps / 1e6:,.0f} MB/s cpu_ratio={cpu_ratio:.2f} "
              f"ratio={ratio:.2f} (reference haproxy {version}, 1 thread, SNI routing; wrk -t2 -c32, 1 MiB, "
              f"nginx HTTPS origin)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
