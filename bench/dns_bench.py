"""bench/dns: dnsperf against heatcache's DNS and against dnsmasq answering the same names, in
the same run: steered names (answered locally by both) and forwarded names with a warm cache
(both forward to the same upstream dnsmasq). Our server runs with its default UDP lane (the
compiled one when built); the steered names are also measured once on the pure-Python path
(HEATCACHE_DNS_FASTLANE=false) for comparison. Last line: ``dns: ... ratio=<steered ours/dnsmasq>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heatcache.netutil import free_port_udp_tcp, terminate  # noqa: E402
from heatcache.services.dnsmasq import Dnsmasq  # noqa: E402

SERVER = r"""
import asyncio, sys
from dns_redirect.index import CacheIndex
from dns_redirect.server import DnsServer
from heatcache.contract import CacheEvent
from heatcache.settings import load_settings
port, upstream, names = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
index = CacheIndex()
for i in range(names):
    index.apply(CacheEvent(f"http://steered{i}.bench.test/f", "cached", path="objects/00/x"))
settings = load_settings(dns_host="127.0.0.1", dns_port=port, upstream_dns=(upstream,), node_address="192.0.2.10",
                         dns_rate_qps=1e9, dns_rate_burst=1e9)  # limiter on, never binding
async def main():
    server = DnsServer(settings, index, health_check=False)
    await server.start()
    print("ready", "compiled" if server.lane is not None else "python", flush=True)
    await asyncio.Event().wait()
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def dnsperf(port: int, queries: Path, seconds: int) -> float:
    proc = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-c", "4",
                           "-l", str(seconds), "-q", "200"], capture_output=True, text=True, check=True)
    match = re.search(r"Queries per second:\s+([\d.]+)", proc.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", proc.stdout)
    if not match:
        raise RuntimeError(proc.stdout + proc.stderr)
    if lost and int(lost.group(1)) > 0:
        print(f"  (dnsperf lost {lost.group(1)} queries on port {port})")
    return float(match.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 5 if args.quick else 20
    names = 200
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"dns: {tool} missing (apt-get install dnsperf dnsmasq-base)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    procs: list[subprocess.Popen[str]] = []
    upstream = Dnsmasq({f"fwd{i}.bench.test": f"198.51.100.{i % 250 + 1}" for i in range(names)})
    steered_ref = Dnsmasq({f"steered{i}.bench.test": "192.0.2.10" for i in range(names)})
    try:
        upstream.start()
        steered_ref.start()
        # dnsmasq as a caching forwarder to the same upstream, for the forwarded names
        fwd_port = free_port_udp_tcp()
        fwd = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                "--listen-address=127.0.0.1", f"--port={fwd_port}", "--user=root", "--pid-file=",
                                f"--server=127.0.0.1#{upstream.port}", "--cache-size=10000"], text=True)
        procs.append(fwd)
        def start_ours(**env: str) -> tuple[int, str]:
            port = free_port_udp_tcp()
            proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), upstream.upstream, str(names)],
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **env})
            procs.append(proc)
            assert proc.stdout is not None
            word, lane = proc.stdout.readline().split()
            assert word == "ready"
            return port, lane

        ours_port, lane = start_ours()
        py_port, py_lane = start_ours(HEATCACHE_DNS_FASTLANE="false")
        assert py_lane == "python"
        time.sleep(0.5)
        steered_q = work / "steered.txt"
        steered_q.write_text("".join(f"steered{i}.bench.test A\n" for i in range(names)))
        fwd_q = work / "forwarded.txt"
        fwd_q.write_text("".join(f"fwd{i}.bench.test A\n" for i in range(names)))
        # warm both caches
        dnsperf(ours_port, fwd_q, 1)
        dnsperf(fwd_port, fwd_q, 1)
        assert steered_ref.proc is not None
        ours_pid, ref_pid = procs[-2].pid, steered_ref.proc.pid
        # Interleaved halves, so a drift in the machine's load hits both servers alike; CPU time
        # per answer too, which still compares the servers when dnsperf itself is the limit.
        s_ours = s_ref = cpu_ours = cpu_ref = 0.0
        for _ in range(2):
            before = cpu_seconds(ours_pid)
            rate = dnsperf(ours_port, steered_q, seconds // 2)
            cpu_ours += cpu_seconds(ours_pid) - before
            s_ours += rate / 2
            before = cpu_seconds(ref_pid)
            rate = dnsperf(steered_ref.port, steered_q, seconds // 2)
            cpu_ref += cpu_seconds(ref_pid) - before
            s_ref += rate / 2
        s_py = dnsperf(py_port, steered_q, seconds)
        f_ours = dnsperf(ours_port, fwd_q, seconds)
        f_ref = dnsperf(fwd_port, fwd_q, seconds)
        us_ours = cpu_ours / (s_ours * (seconds // 2) * 2) * 1e6
        us_ref = cpu_ref / (s_ref * (seconds // 2) * 2) * 1e6
        print(f"steered  : heatcache {s_ours:,.0f} q/s ({lane} UDP lane), dnsmasq {s_ref:,.0f} q/s, "
              f"ratio {s_ours / s_ref:.2f}; Python lane {s_py:,.0f} q/s, ratio {s_py / s_ref:.2f}")
        print(f"  CPU per steered answer: heatcache {us_ours:.1f} us, dnsmasq {us_ref:.1f} us "
              f"(cpu_ratio {us_ref / us_ours:.2f}, >1 = heatcache cheaper)")
        print(f"forwarded: heatcache {f_ours:,.0f} q/s, dnsmasq {f_ref:,.0f} q/s (warm caches), "
              f"ratio {f_ours / f_ref:.2f}")
        print(f"dns: steered={s_ours:,.0f} q/s forwarded={f_ours:,.0f} q/s forwarded_ratio={f_ours / f_ref:.2f} "
              f"cpu_ratio={us_ref / us_ours:.2f} lane={lane} ratio={s_ours / s_ref:.2f} "
              "(reference dnsmasq, dnsperf -c 4)")
        return 0
    finally:
        for p in procs:
            terminate(p)
        steered_ref.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
