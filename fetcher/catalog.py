"""The catalog of cached objects, behind one small interface: SQLite (zero-setup default) or
MySQL/MariaDB through PyMySQL. Same table, same statements bar the upsert dialect."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import pymysql


@dataclass(frozen=True, slots=True)
class Entry:
    cache_key: str
    url: str
    host: str
    path: str
    size: int
    sha256: str
    etag: str
    last_modified: str
    content_type: str
    state: str
    fetched_at: float
    hits: int = 0
    last_hit: float = 0.0


COLUMNS = [f.name for f in fields(Entry)]


class Catalog(Protocol):
    def upsert(self, entry: Entry) -> None: ...
    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None: ...
    def set_state(self, cache_key: str, state: str) -> None: ...
    def get(self, cache_key: str) -> Entry | None: ...
    def all(self) -> list[Entry]: ...
    def close(self) -> None: ...


class SqliteCatalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (cache_key TEXT PRIMARY KEY, url TEXT, host TEXT, path TEXT,"
            " size INTEGER, sha256 TEXT, etag TEXT, last_modified TEXT, content_type TEXT, state TEXT,"
            " fetched_at REAL, hits INTEGER DEFAULT 0, last_hit REAL DEFAULT 0)"
        )

    def upsert(self, entry: Entry) -> None:
        cols = ",".join(COLUMNS)
        marks = ",".join("?" * len(COLUMNS))
        updates = ",".join(f"{c}=excluded.{c}" for c in COLUMNS if c not in ("cache_key", "hits", "last_hit"))
        with self._lock:
            self._db.execute(
                f"INSERT INTO objects ({cols}) VALUES ({marks}) ON CONFLICT(cache_key) DO UPDATE SET {updates}",
                astuple(entry),
            )

    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None:
        """Add a batch of (hits, last hit time) per key: one transaction per batch."""
        with self._lock:
            self._db.executemany("UPDATE objects SET hits = hits + ?, last_hit = MAX(last_hit, ?) WHERE cache_key = ?",
                                 [(n, last, key) for key, (n, last) in hits.items()])

    def set_state(self, cache_key: str, state: str) -> None:
        with self._lock:
            self._db.execute("UPDATE objects SET state = ? WHERE cache_key = ?", (state, cache_key))

    def get(self, cache_key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM objects WHERE cache_key=?",
                                   (cache_key,)).fetchone()
        return Entry(*row) if row else None

    def all(self) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM objects").fetchall()
        return [Entry(*r) for r in rows]

    def close(self) -> None:
        self._db.close()


class MySqlCatalog:
    """MariaDB/MySQL; reconnects on a dropped connection (ping) before each statement."""

    def __init__(self, **connect: Any) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._conn = self._open()
        with self._conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS objects (cache_key VARBINARY(2048) NOT NULL, url TEXT, host VARCHAR(255),"
                " path VARCHAR(255), size BIGINT, sha256 CHAR(64), etag VARCHAR(255), last_modified VARCHAR(64),"
                " content_type VARCHAR(255), state VARCHAR(16), fetched_at DOUBLE, hits BIGINT DEFAULT 0,"
                " last_hit DOUBLE DEFAULT 0,"
                " PRIMARY KEY (cache_key(255)), KEY host (host))"
            )

    def _open(self) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(autocommit=True, charset="utf8mb4", connect_timeout=10, **self._connect)

    def _cursor(self) -> Any:
        try:
            self._conn.ping()
        except pymysql.err.Error:
            self._conn = self._open()  # the server restarted or dropped us: reconnect once
        return self._conn.cursor()

    def upsert(self, entry: Entry) -> None:
        cols = ",".join(COLUMNS)
        marks = ",".join(["%s"] * len(COLUMNS))
        updates = ",".join(f"{c}=VALUES({c})" for c in COLUMNS if c not in ("cache_key", "hits", "last_hit"))
        with self._lock, self._cursor() as cur:
            cur.execute(f"INSERT INTO objects ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {updates}",
                        astuple(entry))

    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None:
        with self._lock, self._cursor() as cur:
            cur.executemany(
                "UPDATE objects SET hits = hits + %s, last_hit = GREATEST(last_hit, %s) WHERE cache_key = %s",
                [(n, last, key) for key, (n, last) in hits.items()],
            )

    def set_state(self, cache_key: str, state: str) -> None:
        with self._lock, self._cursor() as cur:
            cur.execute("UPDATE objects SET state = %s WHERE cache_key = %s", (state, cache_key))

    def get(self, cache_key: str) -> Entry | None:
        with self._lock, self._cursor() as cur:
            cur.execute(f"SELECT {','.join(COLUMNS)} FROM objects WHERE cache_key=%s", (cache_key,))
            row = cur.fetchone()
        return _entry(row) if row else None

    def all(self) -> list[Entry]:
        with self._lock, self._cursor() as cur:
            cur.execute(f"SELECT {','.join(COLUMNS)} FROM objects")
            return [_entry(r) for r in cur.fetchall()]

    def close(self) -> None:
        self._conn.close()


def _entry(row: tuple[Any, ...]) -> Entry:
    key = row[0].decode() if isinstance(row[0], bytes) else row[0]
    return Entry(key, *row[1:])


def open_catalog(url: str) -> Catalog:
    """``sqlite:///abs/path`` or ``mysql://user:pass@host:port/db[?unix_socket=/path]``."""
    if url.startswith("sqlite:///"):
        return SqliteCatalog(Path(url[len("sqlite://"):]))
    parsed = urlparse(url)
    if parsed.scheme != "mysql":
        raise ValueError(f"unsupported catalog URL {url!r}")
    opts = parse_qs(parsed.query)
    connect: dict[str, Any] = {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 3306,
        "user": unquote(parsed.username or "root"),
        "password": unquote(parsed.password or ""),
        "database": parsed.path.lstrip("/") or "heatcache",
    }
    if "unix_socket" in opts:
        connect["unix_socket"] = opts["unix_socket"][0]
    deadline = time.monotonic() + 30
    while True:  # the database may still be starting next to us
        try:
            return MySqlCatalog(**connect)
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
