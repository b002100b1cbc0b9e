"""Key-value stores behind one small base class: SQLite, Redis and an in-process LRU.

The online feature store and the prediction cache are built on these. Keys
are strings, values are bytes, ``ttl`` is in seconds.

    >>> kv = open_kv("memory://")
    >>> kv.set("a", b"1"); kv.mget(["a", "b"])
    [b'1', None]
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from modelmill.config import mask_url
from modelmill.errors import BackendUnavailable, ConfigError
from modelmill.store.breaker import Breaker

__all__ = ["KeyValue", "MemoryKV", "RedisKV", "SQLiteKV", "open_kv"]


class KeyValue(abc.ABC):
    """The contract every key-value backend keeps (see ``tests/store/test_kv.py``)."""

    url: str
    #: Guards a remote backend (see :class:`~modelmill.store.breaker.Breaker`); None where calls cannot hang.
    breaker: Breaker | None = None

    @property
    def executor(self) -> concurrent.futures.Executor | None:
        """Where an event loop runs this backend's calls so that a slow server never blocks it; None: inline
        (an in-process or local-file backend answers in microseconds, a thread hop would cost more)."""
        return None

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...

    @abc.abstractmethod
    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None: ...

    @abc.abstractmethod
    def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None: ...

    @abc.abstractmethod
    def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed."""

    @abc.abstractmethod
    def scan(self, prefix: str = "") -> Iterator[str]:
        """Every live key that starts with ``prefix``, in no set order."""

    def ping(self) -> float:
        """Round trip in seconds; raises :class:`BackendUnavailable` when the backend does not answer."""
        start = time.perf_counter()
        self.get("__modelmill_ping__")
        return time.perf_counter() - start

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"


class SQLiteKV(KeyValue):
    """A key-value table in a SQLite file; one connection per thread, WAL mode.

    Code that keeps tables of its own in the same file (the stream aggregates) uses this thread's
    :meth:`connection` and writes in a :meth:`transaction`.
    """

    def __init__(self, path: str | Path, *, table: str = "kv") -> None:
        if not table.isidentifier():
            raise ConfigError("table", table, "a plain identifier")
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.table = table
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the file (autocommit: ``isolation_level=None``), opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise BackendUnavailable("sqlite", self.url, str(exc)) from exc
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL) WITHOUT ROWID"
            )
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside ``BEGIN IMMEDIATE``: one writer at a time across threads and
        processes; committed when the block ends, rolled back when it raises."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get(self, key: str) -> bytes | None:
        row = self.connection().execute(
            f"SELECT value, expires_at FROM {self.table} WHERE key = ?", (key,)
        ).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        now = time.time()
        found: dict[str, bytes] = {}
        conn = self.connection()
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for k, v, exp in conn.execute(
                f"SELECT key, value, expires_at FROM {self.table} WHERE key IN ({marks})", chunk
            ):
                if exp is None or exp > now:
                    found[k] = bytes(v)
        return [found.get(k) for k in keys]

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self.set_many({key: value}, ttl=ttl)

    def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        expires = None if ttl is None else time.time() + ttl
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO {self.table}(key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                [(k, v, expires) for k, v in items.items()],
            )

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        live = sum(v is not None for v in self.mget(keys))
        marks = ",".join("?" * len(keys))
        self.connection().execute(f"DELETE FROM {self.table} WHERE key IN ({marks})", keys)
        return live

    def scan(self, prefix: str = "") -> Iterator[str]:
        now = time.time()
        # Range scan on the primary key: [prefix, prefix + U+10FFFF).
        rows = self.connection().execute(
            f"SELECT key FROM {self.table} WHERE key >= ? AND key < ? AND (expires_at IS NULL OR expires_at > ?)",
            (prefix, prefix + "\U0010ffff", now),
        ).fetchall()
        for (key,) in rows:
            yield key

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RedisKV(KeyValue):
    """Redis through redis-py; ``prefix`` namespaces every key (tests use it for isolation).

    Every call is bounded by ``socket_timeout`` seconds (the URL's ``?socket_timeout=`` wins) and is never
    retried by redis-py, and goes through a :class:`~modelmill.store.breaker.Breaker`: once Redis stops
    answering, calls raise :class:`BackendUnavailable` at once instead of each waiting out the timeout,
    until a PING (sent every ``retry_after_s`` from the breaker's thread) is answered. Callers on an event
    loop run calls in :attr:`executor`.

    Code that keeps data structures of its own in the same Redis (the stream aggregates' hashes) goes
    through :meth:`script` and :meth:`pipeline`, which keep those guarantees; its keys start with
    :attr:`prefix`.
    """

    def __init__(self, url: str, *, prefix: str = "", socket_timeout: float = 0.5, failures: int = 2,
                 retry_after_s: float = 1.0, threads: int = 4) -> None:
        self.url = url
        self.prefix = prefix
        self.socket_timeout = _url_timeout(url, socket_timeout)
        self.threads = threads
        # The breaker's trial is a PING from its own thread, so no request ever waits on a hung Redis.
        self.breaker: Breaker = Breaker(f"redis at {mask_url(url)}", failures=failures, retry_after_s=retry_after_s,
                                        probe=lambda: self.client.ping())
        self._client: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigError("online", self.url, "install the 'redis' extra: pip install 'modelmill[redis]'") from exc
            # Under the lock: of two clients made at once by two threads, the one dropped would close the
            # other's connections when it is collected (redis-py closes its pool in __del__).
            with self._lock:
                if self._client is None:
                    # No retries: redis-py retries a timeout up to 10 times by default, which turns a hung
                    # server into a wait of many timeouts per call; the breaker decides when to try again.
                    self._client = redis.Redis.from_url(
                        self.url, socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout,
                        health_check_interval=30, retry=Retry(NoBackoff(), 0),
                    )
        return self._client

    @property
    def executor(self) -> concurrent.futures.Executor:
        """A bounded thread pool (``threads`` workers) for calls made on behalf of an event loop."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.threads, thread_name_prefix="modelmill-redis")
        return self._executor

    def script(self, source: str) -> Callable[[Sequence[str], Sequence[Any]], Any]:
        """A Lua script, run atomically by Redis as ``run(keys, args)`` (EVALSHA, loaded on first use)."""
        registered: Any = None

        def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            nonlocal registered
            if registered is None:
                registered = self.client.register_script(source)
            return self._call(registered, keys=list(keys), args=list(args), client=self.client)

        return run

    def pipeline(self, commands: Callable[[Any], object]) -> list[Any]:
        """The replies to the commands that ``commands(pipe)`` queues on a redis-py pipeline, sent in one
        round trip (not a transaction)."""
        pipe = self.client.pipeline(transaction=False)
        commands(pipe)
        return list(self._call(pipe.execute))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        breaker = self.breaker
        if not breaker.allow():
            raise BackendUnavailable("redis", mask_url(self.url), f"not answering ({breaker.reason}); calls are "
                                     f"refused until it answers a PING, tried every {breaker.retry_after_s} s")
        try:
            out = fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            breaker.failure(reason)
            raise BackendUnavailable("redis", mask_url(self.url), reason) from exc
        breaker.success()
        return out

    def get(self, key: str) -> bytes | None:
        return self._call(self.client.get, self.prefix + key)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self._call(self.client.mget, [self.prefix + k for k in keys]))

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        self._call(self.client.set, self.prefix + key, value, px=px)

    def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))

        def commands(pipe: Any) -> None:
            for k, v in items.items():
                pipe.set(self.prefix + k, v, px=px)

        self.pipeline(commands)

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._call(self.client.delete, *[self.prefix + k for k in keys]))

    def scan(self, prefix: str = "") -> Iterator[str]:
        pattern = _glob_escape(self.prefix + prefix) + "*"
        cut = len(self.prefix)
        for key in self._call(lambda: list(self.client.scan_iter(match=pattern, count=1000))):
            yield key.decode()[cut:]

    def ping(self) -> float:
        start = time.perf_counter()
        self._call(self.client.ping)
        return time.perf_counter() - start

    def close(self) -> None:
        self.breaker.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._client is not None:
            self._client.close()
            self._client = None


class MemoryKV(KeyValue):
    """An in-process LRU with TTL: the default prediction cache. Thread-safe."""

    def __init__(self, *, max_items: int = 100_000) -> None:
        self.url = "memory://"
        self.max_items = max_items
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, time.monotonic())

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        with self._lock:
            return [self._live(k, now) for k in keys]

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self.set_many({key: value}, ttl=ttl)

    def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        expires = None if ttl is None else time.monotonic() + ttl
        with self._lock:
            for k, v in items.items():
                self._data[k] = (v, expires)
                self._data.move_to_end(k)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def delete(self, *keys: str) -> int:
        now = time.monotonic()
        with self._lock:
            live = sum(self._live(k, now) is not None for k in keys)
            for k in keys:
                self._data.pop(k, None)
            return live

    def scan(self, prefix: str = "") -> Iterator[str]:
        now = time.monotonic()
        with self._lock:
            keys = [k for k, (_, exp) in self._data.items() if k.startswith(prefix) and (exp is None or exp > now)]
        yield from keys


def _url_timeout(url: str, default: float) -> float:
    """``socket_timeout`` from a Redis URL's query (redis-py reads it from there too), else ``default``."""
    given = parse_qs(urlsplit(url).query).get("socket_timeout")
    if not given:
        return default
    try:
        value = float(given[0])
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise ConfigError("socket_timeout", given[0], "a number of seconds above 0, such as "
                          "'redis://host:6379/0?socket_timeout=0.25'")
    return value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def open_kv(url: str, *, prefix: str = "", table: str = "kv") -> KeyValue:
    """A key-value store for a URL: ``sqlite:///PATH``, ``redis://…``, ``memory://``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if ":///" not in url:
            raise ConfigError("url", url, "'sqlite:///RELATIVE/PATH' or 'sqlite:////ABSOLUTE/PATH'")
        return SQLiteKV(url.split(":///", 1)[1], table=table)
    if scheme in ("redis", "rediss"):
        return RedisKV(url, prefix=prefix)
    if scheme == "memory":
        return MemoryKV()
    raise ConfigError("url", url, "'sqlite:///PATH', 'redis://HOST:PORT/DB' or 'memory://'")
