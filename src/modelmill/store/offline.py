"""The offline store: Parquet tables partitioned by event date, read with DuckDB.

Layout, shared by every stage::

    {root}/{table}/event_date=YYYY-MM-DD/{batch}.parquet

A reader never sees half a file and a crash never leaves one behind: on a local disk
a file is written under a temporary name and renamed; on an object store (S3, GCS,
Azure, ``memory://``), which has no atomic rename, it is uploaded straight to its
final key, because an object becomes visible only once its upload completes (an
interrupted multipart upload stays invisible to listings and reads).

Any fsspec URL works as ``root``: DuckDB reads a non-local store through the same
fsspec filesystem, registered on its database (no DuckDB extension is needed, so
``httpfs`` need not be installed). Listings are not cached across queries: a file
another host wrote is seen by the next connection (within one, the listing is
reused, which saves a request per file). S3 endpoint and credentials come from the
usual places (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``~/.aws``) or fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL``,
``FSSPEC_S3_KEY`` …); see docs/howto/object-storage.md.

    >>> import tempfile, pyarrow as pa, datetime as dt
    >>> store = OfflineStore(tempfile.mkdtemp())
    >>> t = pa.table({"id": [1, 2], "ts": [dt.datetime(2013, 1, 1, 5), dt.datetime(2013, 1, 2, 6)]})
    >>> len(store.write("flights", t, time_column="ts"))
    2
    >>> store.read("flights").num_rows
    2
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from modelmill.errors import ConfigError, InputError, NotFoundError

__all__ = ["OfflineStore", "check_object_store", "is_object_store"]

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
PARTITION = "event_date"



_DATABASES: dict[tuple[int, tuple[tuple[str, Any], ...]], duckdb.DuckDBPyConnection] = {}
_DATABASES_LOCK = threading.Lock()
# The non-local filesystems the offline stores of this process read, by DuckDB's name for them (the
# protocol), and which of them each database has registered (by fsspec token).
_FILESYSTEMS: dict[str, fsspec.AbstractFileSystem] = {}
_TOKENS: dict[str, str] = {}
_TWINS: dict[str, fsspec.AbstractFileSystem] = {}
_REGISTERED: dict[tuple[int, tuple[tuple[str, Any], ...]], dict[str, str]] = {}
# Protocols of stores where an upload is all-or-nothing: a file is written to its final key directly.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "memory"})


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` publishes a file only once its upload completes (and has no atomic rename)."""
    return any(p in OBJECT_STORES for p in _protocols(fs))


def register_filesystem(fs: fsspec.AbstractFileSystem) -> None:
    """Make every DuckDB connection of this process read ``fs``'s URLs through fsspec.

    A database registers one filesystem per protocol: a later store of the same protocol with other
    options (another endpoint) replaces the earlier one for queries started afterwards.
    """
    if isinstance(fs, LocalFileSystem):
        return
    name = _protocols(fs)[0]
    token = str(getattr(fs, "_fs_token", id(fs)))
    with _DATABASES_LOCK:
        if _TOKENS.get(name) == token:
            return
        # One twin per filesystem: a database that registered it earlier still holds that very instance, so
        # emptying its cache in quiet_duckdb reaches what DuckDB reads through.
        twin = _TWINS.get(token)
        if twin is None:
            twin = _TWINS[token] = _listing_twin(fs)
        _FILESYSTEMS[name] = twin
        _TOKENS[name] = token


def _listing_twin(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """``fs`` with a listings cache, for DuckDB: a query's glob then gives every file's size, which saves a
    HEAD request per file on S3 (about 10x on a table of 100 files). ``quiet_duckdb`` empties the cache for
    each connection it hands out, so a connection sees the store as it was at its start, never older."""
    options = dict(getattr(fs, "storage_options", {}))
    if options.get("use_listings_cache", True) or not options:
        return fs
    try:
        return _trusting_listings(type(fs))(**{**options, "use_listings_cache": True, "skip_instance_cache": True})
    except TypeError:  # a filesystem that cannot be rebuilt from its options: read it uncached
        return fs


_TRUSTING: dict[type, type] = {}


def _trusting_listings(cls: type[fsspec.AbstractFileSystem]) -> type[fsspec.AbstractFileSystem]:
    """``cls`` whose listings cache answers for the files it lists and asks the store about any other.

    fsspec's cache says "no such file" for a file missing from its parent's cached listing. One connection's
    second query then failed on a file written after its first query listed the folder (the fleet's hosts
    write the prediction log while the controller reads it): the glob found the new file afresh, and opening
    it consulted the stale listing (FileNotFoundError). A file the listing lacks is looked up (a HEAD on S3)."""

    if cls in _TRUSTING:
        return _TRUSTING[cls]

    class TrustingListings(cls):  # type: ignore[misc,valid-type]
        def _ls_from_cache(self, path: str) -> Any:
            try:
                return super()._ls_from_cache(path)
            except FileNotFoundError:
                return None

    TrustingListings.__name__ = TrustingListings.__qualname__ = f"Listing{cls.__name__}"
    _TRUSTING[cls] = TrustingListings
    return TrustingListings


def _sync_filesystems(key: tuple[int, tuple[tuple[str, Any], ...]], base: duckdb.DuckDBPyConnection) -> None:
    done = _REGISTERED.setdefault(key, {})
    for name, fs in _FILESYSTEMS.items():
        fs.invalidate_cache()
        token = _TOKENS[name]
        if done.get(name) == token:
            continue
        if name in done:
            base.unregister_filesystem(name)
        base.register_filesystem(fs)
        done[name] = token


def quiet_duckdb(config: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (UTC, no progress bar) to this process's in-memory database for ``config``.

    Starting a DuckDB database costs about 15 ms; a connection to a running one (``cursor()``)
    about 0.3 ms, which matters to callers that query once per micro-batch or per hour. Each
    caller still gets its own connection (close it when done). No progress bar: DuckDB draws it
    on stdout, which belongs to a command's --json output.
    """
    key = (os.getpid(), tuple(sorted((config or {}).items())))
    with _DATABASES_LOCK:
        base = _DATABASES.get(key)
        if base is None:
            base = _DATABASES[key] = duckdb.connect(config=dict(config or {}))
        if _FILESYSTEMS:
            _sync_filesystems(key, base)
    con = base.cursor()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def check_table_name(table: str) -> str:
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise InputError("table", "must be a letter or '_' followed by letters, digits or '_'", table)
    return table


def _by_day(data: pa.Table, ts: pa.ChunkedArray, time_column: str) -> list[tuple[str, pa.Table]]:
    """``data`` split by event date (in the column's time zone); a batch within one day is not copied."""
    if ts.null_count == 0:
        bounds = pc.min_max(ts)
        first, last = (bounds[k].as_py().strftime("%Y-%m-%d") for k in ("min", "max"))
        if first == last:  # the usual case (a prediction log flush, a stream's micro-batch)
            return [(first, data)]
    dates = pc.strftime(ts, format="%Y-%m-%d")
    days = pc.unique(dates).to_pylist()
    if None in days:
        raise InputError(time_column, "has null event times")
    return [(day, data.filter(pc.equal(dates, day))) for day in days]


class OfflineStore:
    """Append-only Parquet tables under ``root`` (a folder or an fsspec URL)."""

    def __init__(self, root: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.fs, self._root = open_filesystem(self.root, storage_options)
        self._object_store = is_object_store(self.fs)
        register_filesystem(self.fs)

    def check(self, *, key: str = "offline", write: bool = False) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless the store answers (and, with ``write``, takes a file)."""
        check_object_store(self.fs, self._root, self.root, key=key, write=write)

    def __repr__(self) -> str:
        return f"OfflineStore({self.root!r})"

    def table_path(self, table: str) -> str:
        return f"{self.root}/{check_table_name(table)}"

    def glob(self, table: str) -> str:
        """The glob DuckDB reads a table from."""
        return f"{self.table_path(table)}/**/*.parquet"

    def exists(self, table: str) -> bool:
        """Whether the table holds at least one Parquet file (on a local disk: stops at the first one)."""
        path = f"{self._root}/{check_table_name(table)}"
        if isinstance(self.fs, LocalFileSystem):
            return any(name.endswith(".parquet") for _, _, names in os.walk(path) for name in names)
        return bool(self.fs.glob(f"{path}/**/*.parquet"))

    def tables(self) -> list[str]:
        if not self.fs.exists(self._root):
            return []
        return sorted(Path(e["name"]).name for e in self.fs.ls(self._root, detail=True)
                      if e.get("type") == "directory")

    def write(self, table: str, data: pa.Table, *, time_column: str, batch_id: str | None = None,
              dictionary: Sequence[str] | None = None) -> list[str]:
        """Append ``data``, one file per event date. Returns the files written.

        ``batch_id`` names the files; writing the same batch id again replaces
        those files instead of adding rows, which makes a retried write idempotent.
        ``dictionary``: the (Parquet) columns worth dictionary-encoding, when the
        writer knows; by default every column is tried, which costs time on
        columns of distinct values.
        """
        check_table_name(table)
        if data.num_rows == 0:
            return []
        if time_column not in data.column_names:
            raise InputError("time_column", f"not a column of the batch ({', '.join(data.column_names)})", time_column)
        ts = data.column(time_column)
        if not pa.types.is_timestamp(ts.type):
            raise InputError(time_column, f"must be a timestamp column, got {ts.type}")
        name = batch_id or uuid.uuid4().hex
        written = []
        for day, part in _by_day(data, ts, time_column):
            folder = f"{self._root}/{table}/{PARTITION}={day}"
            final = f"{folder}/{name}.parquet"
            # An object store publishes an upload whole or not at all (and has no rename): write the final key.
            target = final if self._object_store else f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
            if not self._object_store:
                self.fs.makedirs(folder, exist_ok=True)
            with self.fs.open(target, "wb") as fh:
                pq.write_table(part, fh, compression="zstd",
                               use_dictionary=True if dictionary is None else list(dictionary))
            if target != final:
                self.fs.mv(target, final)
            written.append(final)
        return written

    def remove_batch(self, table: str, batch_id: str) -> int:
        """Delete every file of batch ``batch_id`` of ``table`` (one per event date); returns how many.

        A writer that crashed between writing a batch's files and committing it leaves them behind; its
        retry removes them first, so the batch's rows are counted once.

            >>> import tempfile, pyarrow as pa, datetime as dt
            >>> store = OfflineStore(tempfile.mkdtemp())
            >>> t = pa.table({"ts": [dt.datetime(2013, 1, 1), dt.datetime(2013, 1, 2)]})
            >>> _ = store.write("t", t, time_column="ts", batch_id="b1")
            >>> store.remove_batch("t", "b1"), store.remove_batch("t", "b1")
            (2, 0)
        """
        folder = f"{self._root}/{check_table_name(table)}"
        file = f"{batch_id}.parquet"
        if isinstance(self.fs, LocalFileSystem):  # a listing of the day folders, cheaper than a glob
            if not os.path.isdir(folder):
                return 0
            with os.scandir(folder) as entries:
                parts = [e.path for e in entries if e.name.startswith(f"{PARTITION}=")]
            removed = 0
            for part in parts:
                target = os.path.join(part, file)
                if os.path.exists(target):
                    os.remove(target)
                    removed += 1
            return removed
        paths = self.fs.glob(f"{folder}/{PARTITION}=*/{file}")
        if paths:
            self.fs.rm(paths)
        return len(paths)

    def connect(self, tables: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per (existing) table, named after it."""
        con = quiet_duckdb()
        for table in tables if tables is not None else self.tables():
            if self.exists(table):
                con.execute(
                    f"CREATE TEMP VIEW {table} AS SELECT * FROM read_parquet('{self.glob(table)}', "
                    "hive_partitioning = true, union_by_name = true)"
                )
        return con

    def read(self, table: str, *, columns: Sequence[str] | None = None, where: str | None = None) -> pa.Table:
        """A whole table (or some columns, filtered by a SQL ``where``) as Arrow."""
        if not self.exists(table):
            raise NotFoundError("offline table", table, f"nothing has been written under {self.table_path(table)}")
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        query = (f"SELECT {cols} FROM read_parquet('{self.glob(table)}', hive_partitioning = true, "
                 "union_by_name = true)" + (f" WHERE {where}" if where else ""))
        with quiet_duckdb() as con:
            return con.sql(query).to_arrow_table()


def open_filesystem(url: str, storage_options: Mapping[str, Any] | None = None, *, key: str = "offline"
                    ) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of ``url``; a non-local one lists afresh each time (no listings cache).

    Stores on several hosts see each other's files only if nobody trusts a cached listing. A protocol whose
    client is not installed (``s3://`` without s3fs) is a :class:`ConfigError` naming ``key``.
    """
    options = dict(storage_options or {})
    if "://" in url and not url.startswith(("file://", "local://")):
        options.setdefault("use_listings_cache", False)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and url.startswith(("s3://", "s3a://")):
        # Named in the options, the endpoint is part of fsspec's instance token: a client cached for one
        # endpoint is never handed out (nor its DuckDB twin registered) after the environment names another.
        options.setdefault("endpoint_url", endpoint)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise ConfigError(key, url, f"a store whose fsspec client is installed ({exc})") from None
    except (OSError, ValueError) as exc:  # a filesystem that connects when built (hdfs, sftp) or a malformed URL
        raise ConfigError(key, url, f"a reachable store ({_reason(exc)})") from None
    return fs, path


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _impatient(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """An S3 filesystem like ``fs`` that tries once with short timeouts (a probe must not wait out retries)."""
    if "s3" not in _protocols(fs):
        return fs
    options = dict(getattr(fs, "storage_options", {}))
    config = {**options.get("config_kwargs", {}), "connect_timeout": 3, "read_timeout": 10,
              "retries": {"max_attempts": 1}}
    probe = type(fs)(**{**options, "config_kwargs": config, "skip_instance_cache": True})
    probe.retries = 1  # s3fs's own retry loop, around botocore's
    return probe


def check_object_store(fs: fsspec.AbstractFileSystem, path: str, url: str, *, key: str,
                       write: bool = False) -> dict[str, Any]:
    """Probe the store at ``url`` (fs, path); raise :class:`ConfigError` naming ``key`` when it does not answer.

    The probe lists the store's root (for S3: the bucket must exist; it is never created here), and with
    ``write`` also writes, reads back and deletes a small object. A local folder is created when missing.
    Returns what was learnt (``{"writable": True}`` after a write probe).
    """
    info: dict[str, Any] = {}
    try:
        fs = _impatient(fs)
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(path, exist_ok=True)
        elif is_object_store(fs) and _protocols(fs)[0] != "memory":
            bucket = path.split("/", 1)[0]
            try:
                fs.ls(bucket, detail=False)  # raises on an unreachable endpoint or bad credentials
            except FileNotFoundError:
                raise FileNotFoundError(f"bucket {bucket!r} does not exist") from None
        if fs.exists(path):
            fs.ls(path, detail=False)
        if write:
            probe = f"{path}/.modelmill-probe-{uuid.uuid4().hex[:12]}"
            payload = uuid.uuid4().bytes
            fs.pipe_file(probe, payload)
            try:
                if fs.cat_file(probe) != payload:
                    raise OSError("a probe object read back different bytes")
            finally:
                fs.rm_file(probe)
            info["writable"] = True
    except ConfigError:
        raise
    except Exception as exc:  # any failure to answer is the setting's fault as far as the caller can tell
        raise ConfigError(key, url, f"a reachable{', writable' if write else ''} store ({_reason(exc)})") from exc
    return info
