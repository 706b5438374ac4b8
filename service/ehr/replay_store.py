"""Where the CDS Hooks JWT `jti`s are remembered, so that a token is accepted once.

Under gunicorn every worker is its own process: a per-process cache lets a replayed token in
once per worker (issue 14 measured one acceptance per worker out of 20 sends). Three stores:

* **Redis** (`CDS_HOOKS_REPLAY_REDIS_URL`): shared by every pod. `SET key NX EXAT exp` is one
  atomic command, so of any number of concurrent calls with one token exactly one wins.
* **SQLite** (`CDS_HOOKS_REPLAY_DB`, a file in the pod's writable volume): shared by the workers
  of one pod. WAL mode, and the check-and-insert runs in one `BEGIN IMMEDIATE` transaction, which
  takes the database's write lock first, so two workers cannot both find a jti new.
  deploy/gunicorn.conf.py sets a default file when neither is configured.
* **memory** (nothing configured, e.g. in-process tests): one process only.

Keys are SHA-256 digests of (issuer, jti): fixed size, and the store holds no token content.
An entry lives until the token's expiry (plus leeway), after which the token is refused as
expired anyway. A store that cannot be reached fails closed: the call is refused (401) and the
error logged by type.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import weakref
from typing import Any, Protocol

log = logging.getLogger("service.replay_store")


class ReplayStoreError(Exception):
    """The store could not answer; the token must not be accepted."""


class ReplayStore(Protocol):
    def add(self, iss: str, jti: str, exp: float, now: float) -> bool:
        """Record the jti until `exp`; False when it was already recorded (a replay)."""
        ...


def _key(iss: str, jti: str) -> str:
    return hashlib.sha256(f"{len(iss)}:{iss}|{jti}".encode()).hexdigest()


class SqliteReplayStore:
    """One SQLite file shared by the processes of a pod. A connection per process and thread
    (sqlite3 connections must not cross a fork or be shared between threads)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._connect()  # fail at start, not at the first token, if the file cannot be used

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        conn.execute("CREATE TABLE IF NOT EXISTS jti (key TEXT PRIMARY KEY, exp REAL NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE INDEX IF NOT EXISTS jti_exp ON jti (exp)")
        self._local.conn, self._local.pid = conn, os.getpid()
        # Close it when the store goes away (an app discarded in tests, a reload): Python 3.13
        # warns about an unclosed sqlite3 connection. Only in the process that opened it: after a
        # fork the child must not touch the parent's connection.
        weakref.finalize(self, _close_in, conn, os.getpid())
        return conn

    def close(self) -> None:
        """Close this thread's connection. A worker keeps its connection for its whole life;
        this is for short-lived stores (tests), which Python 3.13 warns about when left open."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def add(self, iss: str, jti: str, exp: float, now: float) -> bool:
        key = _key(iss, jti)
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: check and insert are one step
            try:
                conn.execute("DELETE FROM jti WHERE exp < ?", (now,))  # expired tokens fail on exp anyway
                inserted = conn.execute("INSERT OR IGNORE INTO jti (key, exp) VALUES (?, ?)", (key, exp)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"SQLite replay store: {exc.__class__.__name__}") from None
        return inserted == 1


def _close_in(conn: sqlite3.Connection, pid: int) -> None:
    if os.getpid() == pid:
        conn.close()


class RedisReplayStore:
    """`SET legpain-cds:jti:<digest> 1 NX EXAT <exp>` on a Redis shared by every pod."""

    PREFIX = "legpain-cds:jti:"

    def __init__(self, url: str, timeout: float = 2.0, client: Any = None) -> None:
        if client is None:
            import redis  # only needed when configured

            # redis-py's pool notices a fork and opens new connections in the child.
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.client = client

    def add(self, iss: str, jti: str, exp: float, now: float) -> bool:
        import redis

        try:
            # EXAT needs a whole second in the future; never less than one second of life.
            at = max(int(exp) + 1, int(now) + 1)
            return bool(self.client.set(self.PREFIX + _key(iss, jti), b"1", nx=True, exat=at))
        except redis.RedisError as exc:
            raise ReplayStoreError(f"Redis replay store: {exc.__class__.__name__}") from None


class ReplayStoreConfigError(ValueError):
    """The configured store cannot be used: the service must not start."""


def from_config(cfg: dict[str, Any]) -> ReplayStore | None:
    """The shared store configured, or None (the caller keeps its per-process cache). Redis is
    reached at the first token, not here: a Redis outage refuses calls, it does not stop starts."""
    url = str(cfg.get("HOOKS_REPLAY_REDIS_URL") or "").strip()
    if url:
        try:
            store: ReplayStore = RedisReplayStore(url)
        except ValueError as exc:  # the URL does not parse; its text may hold a password
            raise ReplayStoreConfigError(f"CDS_HOOKS_REPLAY_REDIS_URL is not a Redis URL ({exc.__class__.__name__})") \
                from None
        log.info("CDS Hooks replay store: Redis (shared by every pod)")
        return store
    path = str(cfg.get("HOOKS_REPLAY_DB") or "").strip()
    if path:
        try:
            store = SqliteReplayStore(path)
        except (OSError, sqlite3.Error) as exc:
            raise ReplayStoreConfigError(f"CDS_HOOKS_REPLAY_DB {path!r} cannot be used as a SQLite file: {exc}") \
                from None
        log.info("CDS Hooks replay store: SQLite (shared by the workers of this pod)")
        return store
    return None
