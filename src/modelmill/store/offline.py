"""The offline store: Parquet tables partitioned by event date, read with DuckDB.

Layout, shared by every stage::

    {root}/{table}/event_date=YYYY-MM-DD/{batch}.parquet

Files are written under a temporary name and renamed, so a reader never sees
half a file and a crash never leaves one behind.

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

from modelmill.errors import InputError, NotFoundError

__all__ = ["OfflineStore"]

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
PARTITION = "event_date"



_DATABASES: dict[tuple[int, tuple[tuple[str, Any], ...]], duckdb.DuckDBPyConnection] = {}
_DATABASES_LOCK = threading.Lock()


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

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.root)

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
        return sorted(Path(p).name for p in self.fs.ls(self._root, detail=False) if self.fs.isdir(p))

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
            self.fs.makedirs(folder, exist_ok=True)
            final = f"{folder}/{name}.parquet"
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
            with self.fs.open(tmp, "wb") as fh:
                pq.write_table(part, fh, compression="zstd",
                               use_dictionary=True if dictionary is None else list(dictionary))
            self.fs.mv(tmp, final)
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
        for path in paths:
            self.fs.rm(path)
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
