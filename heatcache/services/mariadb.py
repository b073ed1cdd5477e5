"""A private MariaDB server for tests and benchmarks: own data directory, socket and port.

``mariadb-install-db`` initialises a fresh data directory, ``mariadbd`` runs on a free port on
loopback and a socket inside that directory, and :meth:`MariaDB.stop` removes it all.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pymysql

from heatcache.netutil import free_port, terminate
from heatcache.services.procs import with_parent_death


class MariaDBSetupError(RuntimeError):
    """The server binaries are missing or the server did not come up."""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
        )
        if found:
            return found
    raise MariaDBSetupError(f"{names[0]} not found: apt-get install mariadb-server")


class MariaDB:
    """One throw-away ``mariadbd``; ``url`` is a heatcache catalog URL for it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.datadir = self.base_dir / "data"
        self.socket = self.base_dir / "mysqld.sock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/heatcache"

    def start(self, timeout: float = 60.0) -> str:
        install = _binary("mariadb-install-db", "mysql_install_db")
        server = _binary("mariadbd", "mysqld")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [install, "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--user=root"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise MariaDBSetupError(f"mariadb-install-db failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        self.port = free_port()
        log = open(self.base_dir / "mariadbd.log", "ab")
        self.proc = subprocess.Popen(
            with_parent_death(
                [server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
                 "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                 f"--pid-file={self.base_dir / 'mariadbd.pid'}"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MariaDBSetupError(f"mariadbd exited; see {self.base_dir / 'mariadbd.log'}")
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1)
            except pymysql.err.OperationalError:
                time.sleep(0.1)
                continue
            with conn:
                conn.cursor().execute("CREATE DATABASE IF NOT EXISTS heatcache")
            return self.url
        self.stop()
        raise MariaDBSetupError("mariadbd did not accept connections in time")

    def stop(self) -> None:
        terminate(self.proc, 30)
        self.proc = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
