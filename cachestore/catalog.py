"""The catalog of cached objects, behind one small interface: SQLite (zero-setup default) or
MySQL/MariaDB through PyMySQL.

The schema is versioned: ``schema_migrations`` records which numbered migrations ran, and
:data:`MIGRATIONS` lists them in order. Migration 1 is the reliability fix: the primary key is the
fixed-width SHA-256 of the cache key (``PRIMARY KEY (cache_key(255))`` collapsed keys sharing
their first 255 bytes) and every origin-supplied value is a TEXT column (a 402-character ETag
overflowed ``VARCHAR(255)``). Rows of the old ``objects`` table are copied over. Migration 2 adds
the coherence and heat columns, migration 3 the fetcher's admissions (``fetch_admissions``: the
last admission taken on per key, consecutive failures and the back-off). Migrations run under a
lock (``GET_LOCK`` on MariaDB, an immediate transaction on SQLite) so the edge and the fetcher
starting together do not race, and each step is idempotent so an interrupted migration simply
runs again.

A database that cannot be reached raises :class:`CatalogUnavailable`: callers back off and retry
(the fetcher keeps the message, the edge keeps its hit counts); nothing here exits.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, astuple, dataclass, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import pymysql


class CatalogUnavailable(RuntimeError):
    """The catalog's database cannot be reached (or failed) right now; try again later."""


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
    fresh_until: float = 0.0  # absolute time the stored copy stops being fresh (0 = unknown)
    checked_at: float = 0.0  # last time the origin confirmed it (fetch or revalidation)
    heat: int = 0  # distinct clients when streams made it hot (prefetch) or 0 (in-path fill)
    cache_control: str = ""  # the origin's Cache-Control, for revalidation decisions


@dataclass(frozen=True, slots=True)
class Admission:
    """What the fetcher did with the last hot URL of a key (migration 3): kept in the catalog so a
    restarted fetcher neither downloads a re-sent admission again nor forgets a failure."""

    cache_key: str
    admission: str  # HotUrl.admission last taken on ("" when streams sent none)
    state: str  # fetching, cached or failed
    failures: int = 0  # consecutive failed fetches
    retry_after: float = 0.0  # wall clock: a failed key is not fetched again before this
    reason: str = ""  # the last failure's reason
    updated_at: float = 0.0


ADMISSION_COLUMNS = [f.name for f in fields(Admission)]
COLUMNS = [f.name for f in fields(Entry)]
# a refetch keeps what the edge counted
_KEEP_ON_UPSERT = ("cache_key", "hits", "last_hit")


def key_hash(cache_key: str) -> str:
    """The fixed-width primary key: hex SHA-256 of the key's bytes (also the object file name)."""
    return hashlib.sha256(cache_key.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, (bytes, bytearray)) else str(value)


_ZERO: dict[str, Any] = {"int": 0, "float": 0.0, "str": ""}
_DEFAULTS = [f.default if f.default is not MISSING else _ZERO[str(f.type)] for f in fields(Entry)]


def _entry(row: tuple[Any, ...]) -> Entry:
    values = list(row)
    values[0] = _text(values[0])
    values[1] = _text(values[1] if values[1] is not None else "")
    for i, v in enumerate(values):  # NULLs of rows migrated from the old table
        if v is None:
            values[i] = _DEFAULTS[i]
    return Entry(*values)


class Catalog(Protocol):
    def upsert(self, entry: Entry) -> None: ...
    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None: ...
    def set_state(self, cache_key: str, state: str) -> None: ...
    def get(self, cache_key: str) -> Entry | None: ...
    def all(self) -> list[Entry]: ...
    def cached(self) -> list[Entry]: ...
    def cached_bytes(self) -> int: ...
    def by_host(self, host: str) -> list[Entry]: ...
    def due(self, now: float, min_interval_s: float, limit: int) -> list[Entry]: ...
    def refresh(self, cache_key: str, fresh_until: float, checked_at: float, etag: str, last_modified: str,
                cache_control: str) -> None: ...
    def get_admission(self, cache_key: str) -> Admission | None: ...
    def put_admission(self, admission: Admission) -> None: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...


# -- schema: the same logical columns on both engines --------------------------------------------
_SQLITE_V1 = (
    "CREATE TABLE IF NOT EXISTS cache_objects (key_hash TEXT PRIMARY KEY, cache_key TEXT NOT NULL, url TEXT,"
    " host TEXT, path TEXT, size INTEGER, sha256 TEXT, etag TEXT, last_modified TEXT, content_type TEXT,"
    " state TEXT, fetched_at REAL, hits INTEGER DEFAULT 0, last_hit REAL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS cache_objects_host ON cache_objects (host)",
)
_MYSQL_V1 = (
    # cache_key and url as BLOB: a key is bytes of any length (surrogate-escaped), compared exactly
    "CREATE TABLE IF NOT EXISTS cache_objects (key_hash CHAR(64) CHARACTER SET ascii NOT NULL, cache_key BLOB NOT"
    " NULL, url BLOB, host VARCHAR(255), path TEXT, size BIGINT, sha256 CHAR(64), etag TEXT, last_modified TEXT,"
    " content_type TEXT, state VARCHAR(16), fetched_at DOUBLE, hits BIGINT DEFAULT 0, last_hit DOUBLE DEFAULT 0,"
    " PRIMARY KEY (key_hash), KEY cache_objects_host (host)) CHARACTER SET utf8mb4",
)
_V2_COLUMNS = (("fresh_until", "REAL DEFAULT 0", "DOUBLE DEFAULT 0"), ("checked_at", "REAL DEFAULT 0",
               "DOUBLE DEFAULT 0"), ("heat", "INTEGER DEFAULT 0", "BIGINT DEFAULT 0"),
               ("cache_control", "TEXT", "TEXT"))
LEGACY_COLUMNS = COLUMNS[:13]  # the unversioned `objects` table of before migration 1


class _Dialect:
    """What differs between the engines: parameter marks, upsert syntax, introspection."""

    mark: str
    name: str

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError


def _migration_1(db: _Dialect) -> None:
    for stmt in (_SQLITE_V1 if db.name == "sqlite" else _MYSQL_V1):
        db.execute(stmt)
    if "objects" in db.tables():  # rows of the unversioned table: copy under their hash, keep the old one aside
        cols = ",".join(LEGACY_COLUMNS)
        rows = db.execute(f"SELECT {cols} FROM objects")
        m = db.mark
        db.executemany(
            f"INSERT INTO cache_objects (key_hash,{cols}) VALUES ({','.join([m] * (len(LEGACY_COLUMNS) + 1))})"
            + (" ON CONFLICT(key_hash) DO NOTHING" if db.name == "sqlite"
               else " ON DUPLICATE KEY UPDATE key_hash=key_hash"),
            [(key_hash(_text(r[0])), _text(r[0]), *r[1:]) for r in rows],
        )
        db.execute("ALTER TABLE objects RENAME TO objects_before_v1" if db.name == "sqlite"
                   else "RENAME TABLE objects TO objects_before_v1")


def _migration_2(db: _Dialect) -> None:
    have = db.columns("cache_objects")
    for name, sqlite_type, mysql_type in _V2_COLUMNS:
        if name not in have:
            kind = sqlite_type if db.name == "sqlite" else mysql_type
            db.execute(f"ALTER TABLE cache_objects ADD COLUMN {name} {kind}")


def _migration_3(db: _Dialect) -> None:
    if db.name == "sqlite":
        db.execute("CREATE TABLE IF NOT EXISTS fetch_admissions (key_hash TEXT PRIMARY KEY, cache_key TEXT NOT NULL,"
                   " admission TEXT, state TEXT, failures INTEGER DEFAULT 0, retry_after REAL DEFAULT 0,"
                   " reason TEXT, updated_at REAL DEFAULT 0)")
    else:
        db.execute("CREATE TABLE IF NOT EXISTS fetch_admissions (key_hash CHAR(64) CHARACTER SET ascii NOT NULL,"
                   " cache_key BLOB NOT NULL, admission BLOB, state VARCHAR(16), failures INT DEFAULT 0,"
                   " retry_after DOUBLE DEFAULT 0, reason TEXT, updated_at DOUBLE DEFAULT 0,"
                   " PRIMARY KEY (key_hash)) CHARACTER SET utf8mb4")


MIGRATIONS: tuple[tuple[int, str, Callable[[_Dialect], None]], ...] = (
    (1, "sha256 primary key, TEXT columns (copies the old objects table)", _migration_1),
    (2, "coherence and heat columns: fresh_until, checked_at, heat, cache_control", _migration_2),
    (3, "fetch_admissions: the fetcher's admitted / failed keys with their back-off", _migration_3),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _migrate(db: _Dialect) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT,"
               " applied_at DOUBLE)")
    done = {int(r[0]) for r in db.execute("SELECT version FROM schema_migrations")}
    for version, description, step in MIGRATIONS:
        if version in done:
            continue
        step(db)
        db.execute(f"INSERT INTO schema_migrations (version, description, applied_at) VALUES ({db.mark},{db.mark},"
                   f"{db.mark})", (version, description, time.time()))


class _SqlCatalog:
    """The statements, shared by both engines; subclasses supply the connection."""

    db: _Dialect
    _lock: threading.Lock

    def _upsert_sql(self) -> str:
        raise NotImplementedError

    def upsert(self, entry: Entry) -> None:
        with self._guard():
            self.db.execute(self._upsert_sql(), (key_hash(entry.cache_key), *astuple(entry)))

    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None:
        """Add a batch of (hits, last hit time) per key: one statement batch."""
        if not hits:
            return
        m = self.db.mark
        greatest = "MAX" if self.db.name == "sqlite" else "GREATEST"
        with self._guard():
            self.db.executemany(f"UPDATE cache_objects SET hits = hits + {m}, last_hit = {greatest}(last_hit, {m})"
                                f" WHERE key_hash = {m}", [(n, last, key_hash(k)) for k, (n, last) in hits.items()])

    def set_state(self, cache_key: str, state: str) -> None:
        m = self.db.mark
        with self._guard():
            self.db.execute(f"UPDATE cache_objects SET state = {m} WHERE key_hash = {m}", (state, key_hash(cache_key)))

    def get(self, cache_key: str) -> Entry | None:
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM cache_objects WHERE key_hash = {m}",
                                   (key_hash(cache_key),))
        return _entry(rows[0]) if rows else None

    def all(self) -> list[Entry]:
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM cache_objects")
        return [_entry(r) for r in rows]

    def cached(self) -> list[Entry]:
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM cache_objects WHERE state = {m}", ("cached",))
        return [_entry(r) for r in rows]

    def cached_bytes(self) -> int:
        """The cached objects' total size, summed by the database (a store's quota check reads no
        rows unless it must evict)."""
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT COALESCE(SUM(size), 0) FROM cache_objects WHERE state = {m}", ("cached",))
        return int(rows[0][0] or 0)

    def by_host(self, host: str) -> list[Entry]:
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM cache_objects WHERE host = {m}", (host,))
        return [_entry(r) for r in rows]

    def due(self, now: float, min_interval_s: float, limit: int) -> list[Entry]:
        """Cached objects past their freshness and not asked about for ``min_interval_s``, the
        longest stale first (what the revalidation loop asks the origin about)."""
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM cache_objects WHERE state = {m} AND"
                                   f" fresh_until <= {m} AND checked_at <= {m} ORDER BY fresh_until LIMIT {int(limit)}",
                                   ("cached", now, now - min_interval_s))
        return [_entry(r) for r in rows]

    def refresh(self, cache_key: str, fresh_until: float, checked_at: float, etag: str, last_modified: str,
                cache_control: str) -> None:
        """The origin confirmed the stored copy (304): new freshness and validators."""
        m = self.db.mark
        with self._guard():
            self.db.execute(f"UPDATE cache_objects SET fresh_until = {m}, checked_at = {m}, etag = {m},"
                            f" last_modified = {m}, cache_control = {m} WHERE key_hash = {m}",
                            (fresh_until, checked_at, etag, last_modified, cache_control, key_hash(cache_key)))

    def get_admission(self, cache_key: str) -> Admission | None:
        m = self.db.mark
        with self._guard():
            rows = self.db.execute(f"SELECT {','.join(ADMISSION_COLUMNS)} FROM fetch_admissions WHERE key_hash = {m}",
                                   (key_hash(cache_key),))
        if not rows:
            return None
        r = rows[0]
        return Admission(_text(r[0]), _text(r[1] or ""), str(r[2] or ""), int(r[3] or 0), float(r[4] or 0.0),
                         str(r[5] or ""), float(r[6] or 0.0))

    def put_admission(self, admission: Admission) -> None:
        m = self.db.mark
        cols = "key_hash," + ",".join(ADMISSION_COLUMNS)
        values = ",".join([m] * (len(ADMISSION_COLUMNS) + 1))
        if self.db.name == "sqlite":
            sql = f"INSERT OR REPLACE INTO fetch_admissions ({cols}) VALUES ({values})"
        else:
            sql = (f"INSERT INTO fetch_admissions ({cols}) VALUES ({values}) ON DUPLICATE KEY UPDATE "
                   + ",".join(f"{c}=VALUES({c})" for c in ADMISSION_COLUMNS))
        with self._guard():
            self.db.execute(sql, (key_hash(admission.cache_key), *astuple(admission)))

    def schema_version(self) -> int:
        with self._guard():
            rows = self.db.execute("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        raise NotImplementedError
        yield


class _SqliteDialect(_Dialect):
    mark = "?"
    name = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, args).fetchall()

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(sql, rows)

    def tables(self) -> set[str]:
        return {r[0] for r in self.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def columns(self, table: str) -> set[str]:
        return {r[1] for r in self.execute(f"PRAGMA table_info({table})")}


class SqliteCatalog(_SqlCatalog):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self.db = _SqliteDialect(self._conn)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # one migrator at a time across processes
            try:
                _migrate(self.db)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _upsert_sql(self) -> str:
        cols = "key_hash," + ",".join(COLUMNS)
        updates = ",".join(f"{c}=excluded.{c}" for c in COLUMNS if c not in _KEEP_ON_UPSERT)
        return (f"INSERT INTO cache_objects ({cols}) VALUES ({','.join('?' * (len(COLUMNS) + 1))})"
                f" ON CONFLICT(key_hash) DO UPDATE SET {updates}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as exc:  # locked for longer than the timeout, disk I/O error
                raise CatalogUnavailable(f"sqlite: {exc}") from exc

    def close(self) -> None:
        self._conn.close()


class _MySqlDialect(_Dialect):
    mark = "%s"
    name = "mysql"

    def __init__(self, owner: MySqlCatalog) -> None:
        self.owner = owner

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self.owner._conn.cursor() as cur:
            cur.execute(sql, args or None)
            return list(cur.fetchall())

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            with self.owner._conn.cursor() as cur:
                cur.executemany(sql, rows)

    def tables(self) -> set[str]:
        return {_text(r[0]) for r in self.execute("SHOW TABLES")}

    def columns(self, table: str) -> set[str]:
        return {_text(r[0]) for r in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s",
            (table,))}


class MySqlCatalog(_SqlCatalog):
    """MariaDB/MySQL. A dropped connection is reopened once per statement; if the server is
    still away the statement raises :class:`CatalogUnavailable` (the caller backs off)."""

    def __init__(self, **connect: Any) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._conn: Any = None
        self.db = _MySqlDialect(self)
        with self._guard():
            self.db.execute("SELECT GET_LOCK('heatcache_catalog_migrate', 60)")
            try:
                _migrate(self.db)
            finally:
                self.db.execute("SELECT RELEASE_LOCK('heatcache_catalog_migrate')")

    def _open(self) -> Any:
        return pymysql.connect(autocommit=True, charset="utf8mb4", connect_timeout=5, read_timeout=30,
                               write_timeout=30, **self._connect)

    def _upsert_sql(self) -> str:
        cols = "key_hash," + ",".join(COLUMNS)
        updates = ",".join(f"{c}=VALUES({c})" for c in COLUMNS if c not in _KEEP_ON_UPSERT)
        return (f"INSERT INTO cache_objects ({cols}) VALUES ({','.join(['%s'] * (len(COLUMNS) + 1))})"
                f" ON DUPLICATE KEY UPDATE {updates}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            try:
                if self._conn is not None:
                    try:
                        self._conn.ping(reconnect=False)
                    except pymysql.err.Error:  # the server restarted or dropped us: reopen once
                        self._drop()
                if self._conn is None:
                    self._conn = self._open()
                yield
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                self._drop()
                raise CatalogUnavailable(f"mysql: {exc}") from exc

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pymysql.err.Error:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()


def open_catalog(url: str, wait_s: float = 30.0) -> Catalog:
    """``sqlite:///abs/path`` or ``mysql://user:pass@host:port/db[?unix_socket=/path]``; waits up
    to ``wait_s`` for a database that is still starting next to us."""
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
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return MySqlCatalog(**connect)
        except CatalogUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
