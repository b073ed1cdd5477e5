"""bench/edge: wrk against the edge (cache hits from disk) and against nginx serving the same
files, in the same run, for 1 MiB and 64 KiB objects. Last line:
``edge: ... ratio=<the smaller of the two edge/nginx ratios> (reference nginx)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from _procs import Procs, nginx_missing, wrk  # bench/_procs.py (sets up sys.path)

from cachestore.paths import object_relpath
from heatcache.netutil import free_port

EDGE = r"""
import asyncio, sys
from pathlib import Path
from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.settings import load_settings
port, cache_dir = int(sys.argv[1]), Path(sys.argv[2])
settings = load_settings(cache_dir=cache_dir, edge_port=port)
index = CacheIndex()
for line in sys.argv[3:]:
    key, rel, size = line.split("|")
    index.apply(CacheEvent(key, "cached", path=rel, size=int(size), content_type="application/octet-stream"))
async def main():
    await Edge(settings, index, KeyRules.load()).start("127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()
import uvloop
uvloop.run(main())  # as `heatcache edge` runs
"""

# the reference: nginx serving the files itself, one worker, sendfile
NGINX_HTTP = """    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 5 if args.quick else 20
    if nginx_missing() or shutil.which("wrk") is None:
        print("edge: nginx and wrk are needed (apt-get install nginx-light wrk)", file=sys.stderr)
        return 2
    with Procs("bench-edge-") as procs:
        work = procs.work
        www = work / "www"
        www.mkdir()
        cache = work / "cache"
        files = {"1m.bin": 1024 * 1024, "64k.bin": 64 * 1024}
        edge_port, nginx_port = free_port(), free_port()
        entries = []
        for name, size in files.items():
            data = os.urandom(size)
            (www / name).write_bytes(data)
            key = f"http://bench.test:{edge_port}/{name}"
            rel = object_relpath(key)
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            (cache / rel).write_bytes(data)
            entries.append(f"{key}|{rel}|{size}")
        procs.nginx(NGINX_HTTP.format(port=nginx_port, www=www), ("127.0.0.1", nginx_port))
        procs.python(EDGE, str(edge_port), str(cache), *entries)
        time.sleep(0.3)
        results = {}
        for name in files:
            e_rps, e_bps = wrk(f"http://127.0.0.1:{edge_port}/{name}", seconds, f"bench.test:{edge_port}")
            n_rps, n_bps = wrk(f"http://127.0.0.1:{nginx_port}/{name}", seconds, "bench.test")
            results[name] = e_rps / n_rps
            print(f"{name:>8}: edge {e_rps:,.0f} req/s ({e_bps / 1e9:.2f} GB/s), "
                  f"nginx {n_rps:,.0f} req/s ({n_bps / 1e9:.2f} GB/s), ratio {e_rps / n_rps:.2f}")
        print(f"edge: 1MiB_ratio={results['1m.bin']:.2f} 64KiB_ratio={results['64k.bin']:.2f} "
              f"ratio={min(results.values()):.2f} (reference nginx, 1 worker, wrk -t2 -c32; the smaller ratio)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
