"""dnsmasq as a stand-in for the campus's upstream resolver (demo, tests, benchmarks).

It answers fixed names (``--address=/name/ip``) on a loopback port and nothing else: no
/etc/hosts, no resolv.conf, so no query ever leaves the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping

import dns.message
import dns.query

from heatcache.netutil import free_port_udp_tcp, terminate
from heatcache.services.procs import with_parent_death


class DnsmasqSetupError(RuntimeError):
    """dnsmasq is missing or did not answer."""


class Dnsmasq:
    def __init__(self, records: Mapping[str, str], address: str = "127.0.0.1", port: int = 0,
                 txt: Mapping[str, list[str]] | None = None) -> None:
        self.records = dict(records)
        self.txt = dict(txt or {})
        self.address = address
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        fixed = bool(self.port)
        for _attempt in range(5):
            try:
                return self._start(timeout)
            except DnsmasqSetupError as exc:
                # another process took the free port between the check and the bind: try another
                if fixed or "Address already in use" not in str(exc):
                    raise
                self.port = 0
        raise DnsmasqSetupError("no free port for dnsmasq after 5 attempts")

    def _start(self, timeout: float) -> str:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not shutil.which(binary):
            raise DnsmasqSetupError("dnsmasq not found: apt-get install dnsmasq-base")
        self.port = self.port or free_port_udp_tcp(self.address)
        args = [binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
                f"--listen-address={self.address}", f"--port={self.port}", "--user=root", "--pid-file=",
                "--log-facility=-", "--cache-size=1000", "--local-ttl=60"]
        args += [f"--address=/{name}/{ip}" for name, ip in self.records.items()]
        args += [f"--txt-record={name},{','.join(texts)}" for name, texts in self.txt.items()]
        self.proc = subprocess.Popen(with_parent_death(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        name = next(iter(self.records), "heatcache.invalid")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.stop()
                raise DnsmasqSetupError(f"dnsmasq exited: {err}")
            try:
                dns.query.udp(dns.message.make_query(name, "A"), self.address, port=self.port, timeout=0.5)
                return self.upstream
            except (TimeoutError, OSError, dns.exception.Timeout):
                time.sleep(0.1)
        self.stop()
        raise DnsmasqSetupError("dnsmasq did not answer")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
