"""Kubernetes exec probes that exercise a stage: ``python -m heatcache.probe dns|aria2|policy-proxy``.

``dns`` sends one real query to the server's UDP port and accepts any well-formed answer with
the query's id (a slow upstream must not get the resolver restarted); ``aria2`` calls
``aria2.getVersion`` with the RPC secret; ``policy-proxy`` asks the fetcher's address-policy
proxy a question without credentials and accepts its 407 (it answers HTTP, and nothing passes).
All read the same HEATCACHE_* settings as the stage in the pod, so the probe follows the
configured port. Exit 0 = healthy.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.request

from dnslib import DNSRecord

from heatcache.settings import Settings, load_settings


def probe_dns(settings: Settings, timeout: float = 3.0) -> bool:
    host = "127.0.0.1" if settings.dns_host in ("0.0.0.0", "") else settings.dns_host
    query = DNSRecord.question("health.heatcache.invalid", "A")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query.pack(), (host, settings.dns_port))
        data, _ = sock.recvfrom(65535)
    return DNSRecord.parse(data).header.id == query.header.id


def probe_aria2(settings: Settings, timeout: float = 3.0) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": "probe", "method": "aria2.getVersion",
                       "params": [f"token:{settings.aria2_secret.get_secret_value()}"]}).encode()
    url = f"{settings.aria2_rpc_host}:{settings.aria2_rpc_port}/jsonrpc"
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return "version" in json.loads(resp.read()).get("result", {})


def probe_policy_proxy(settings: Settings, timeout: float = 3.0) -> bool:
    with socket.create_connection(("127.0.0.1", settings.policy_proxy_port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"GET /.heatcache/refused/probe HTTP/1.1\r\nHost: probe\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 407 ")


PROBES = {"dns": probe_dns, "aria2": probe_aria2, "policy-proxy": probe_policy_proxy}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in PROBES:
        print(f"usage: python -m heatcache.probe {{{'|'.join(PROBES)}}}", file=sys.stderr)
        return 2
    try:
        ok = PROBES[args[0]](load_settings())
    except (OSError, ValueError) as exc:
        print(f"{args[0]} probe failed: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
