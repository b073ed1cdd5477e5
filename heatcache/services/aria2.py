"""aria2c as the fetcher's download engine: JSON-RPC on loopback with a secret, a session file
so unfinished downloads survive a restart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from heatcache.netutil import free_port, port_is_free, terminate, wait_for_port
from heatcache.services.procs import port_owner, with_parent_death


class Aria2SetupError(RuntimeError):
    """aria2c is missing or did not open its RPC port."""


class Aria2Daemon:
    """One ``aria2c --enable-rpc`` process; ``port`` is its RPC port."""

    def __init__(self, state_dir: Path, secret: str, port: int = 0, bind_address: str = "") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.bind_address = bind_address
        self.secret = secret
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        binary = shutil.which("aria2c")
        if binary is None:
            raise Aria2SetupError("aria2c not found: apt-get install aria2")
        session = self.state_dir / "aria2.session"
        session.touch()
        return [
            binary, "--enable-rpc", "--rpc-listen-all=false", f"--rpc-listen-port={self.port}",
            f"--rpc-secret={self.secret}", f"--input-file={session}", f"--save-session={session}",
            "--save-session-interval=10", f"--dir={self.state_dir / 'downloads'}", "--continue=true",
            "--auto-file-renaming=false", "--allow-overwrite=true", "--max-concurrent-downloads=4",
            "--max-connection-per-server=1", "--split=1", "--file-allocation=none", "--quiet=true",
            "--disable-ipv6=false", "--check-certificate=true", "--follow-torrent=false",
            # written through (no 16 MiB memory cache) with its control file saved every second:
            # a kill -9 of aria2c loses at most a second, and the download resumes from the file
            "--disk-cache=0", "--auto-save-interval=1",
        ] + ([f"--interface={self.bind_address}"] if self.bind_address else [])

    def start(self, timeout: float = 20.0) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        elif not port_is_free(self.port):
            # never talk to someone else's aria2c (or whatever holds the port) with our secret
            raise Aria2SetupError(f"aria2 RPC port {self.port} is held by {port_owner(self.port) or 'another process'}")
        log = open(self.state_dir / "aria2c.log", "ab")
        self.proc = subprocess.Popen(with_parent_death(self.command()), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        if not wait_for_port("127.0.0.1", self.port, timeout, alive=self.proc):
            self.stop()
            raise Aria2SetupError(f"aria2c did not open RPC port {self.port}; see {self.state_dir / 'aria2c.log'}")
        return self.port

    def stop(self) -> None:
        terminate(self.proc, 15)  # aria2c saves its session on SIGTERM
        self.proc = None
