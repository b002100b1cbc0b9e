"""The sink: micro-batches into the offline store, each event id written once however often it arrives.

One commit, in one metadata-database transaction:

1. take the table's write lock (``UPDATE ingest_tables SET seq = seq + 1``), which
   also names the batch (``ingest-<seq>``);
2. catch up on the id hashes other sinks committed since this one last looked;
3. drop events whose id is already stored (and repeats inside the batch);
4. remove files a crashed writer left under this batch name, write the Parquet files;
5. record the batch's id hashes and the dead letters; commit.

A crash before the commit rolls the sequence back, so the next writer reuses the
name and deletes the orphaned files before writing; a crash after it leaves the
events recorded, so their redelivery is dropped in step 3. Ids are indexed by a
64-bit hash: two distinct ids collide with probability about n²/2⁶⁵ (3·10⁻⁸ for a
million events), in which case the later one would be dropped.

On an object store (S3 and the like), which has no atomic rename, the protocol is
the same and needs none: the commit point is the metadata-database transaction,
never a file operation. What it relies on of the store:

* an upload is all or nothing: a file is uploaded straight to its final key
  (``{table}/event_date=D/ingest-<seq>.parquet``), and a writer killed mid-upload
  leaves no object (an unfinished multipart upload is invisible to listings and
  reads; a bucket lifecycle rule "abort incomplete multipart uploads" reclaims it);
* a PUT to an existing key replaces it whole, so a retry that rewrites a batch name
  never shows a mix of two attempts;
* listings are strongly consistent (S3 since 2020, MinIO, moto; the store's fsspec
  filesystem keeps no listings cache), so step 4 finds every orphan of the name,
  on every day it spans, before the new files are written.

Between a crash and the next commit, an orphan's rows are visible to a reader of
the table (on a local disk as on S3); the next commit of the table, which reuses
the name, removes them before it writes. ``tests/ingest/test_crash_s3.py`` SIGKILLs
consumers writing to moto's S3 server and checks every event is stored once.

    >>> import tempfile, datetime as dt, pyarrow as pa
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.ingest.schema import EventSchema, Field
    >>> s = EventSchema(name="clicks", fields=[Field("id", "string"), Field("ts", "timestamp")],
    ...                 event_id="id", event_time="ts")
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> sink = OfflineSink(p, s).open()
    >>> t = pa.table({"id": ["a", "b"], "ts": [dt.datetime(2024, 1, 1)] * 2}, schema=s.arrow_schema)
    >>> sink.commit(t).num_rows, sink.commit(t).num_rows
    (2, 0)
    >>> p.offline.read("clicks").num_rows
    2
    >>> p.close()
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelmill.ingest.deadletters import DeadLetters
from modelmill.ingest.schema import EventSchema
from modelmill.ingest.validation import Rejected
from modelmill.project import Project
from modelmill.store.tables.ingest import ingest_batches, ingest_tables

__all__ = ["IdIndex", "OfflineSink", "hash_ids"]

_EMPTY = np.empty(0, dtype=np.uint64)


def hash_ids(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """64-bit hashes of event ids (SipHash with a fixed key, so stable across processes)."""
    values = ids.to_numpy(zero_copy_only=False) if isinstance(ids, pa.Array) else ids.to_numpy()
    return np.asarray(pd.util.hash_array(values, categorize=False), dtype=np.uint64)


class IdIndex:
    """A set of uint64 hashes kept as a few sorted runs (8 bytes per id, vectorised lookups).

        >>> idx = IdIndex(); idx.add(np.array([3, 1], dtype=np.uint64))
        >>> idx.contains(np.array([1, 2, 3], dtype=np.uint64)).tolist()
        [True, False, True]
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add(self, hashes: np.ndarray) -> None:
        if len(hashes) == 0:
            return
        self._runs.append(np.sort(hashes))
        # Merge like a binary counter: a run never sits beside a smaller one, so there are O(log n) runs.
        while len(self._runs) > 1 and len(self._runs[-1]) * 2 >= len(self._runs[-2]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="stable")

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self._runs:
            pos = np.searchsorted(run, hashes)
            pos[pos == len(run)] = len(run) - 1
            found |= run[pos] == hashes
        return found


class OfflineSink:
    """Writes validated micro-batches of one schema into ``project.offline``, table = schema name."""

    def __init__(self, project: Project, schema: EventSchema, *, stream: str | None = None) -> None:
        self.project = project
        self.schema = schema
        self.stream = stream or schema.name
        self.table = schema.name
        # The index belongs to one table of one offline store: two projects sharing a metadata
        # database but writing different offline roots must not drop each other's events.
        root = hashlib.sha1(project.settings.offline.rstrip("/").encode()).hexdigest()[:16]
        self._key = f"{self.table}@{root}"
        self.dead_letters = DeadLetters(project.db)
        self._index = IdIndex()
        self._seen = -1
        self._opened = False
        self.rows_written = 0
        self.duplicates_dropped = 0

    def __repr__(self) -> str:
        return f"OfflineSink(table={self.table!r}, stream={self.stream!r})"

    def open(self) -> OfflineSink:
        """Create the table's lock row if needed and load the id index of everything committed so far."""
        if self._opened:
            return self
        self.project.offline.check()  # an unreachable store fails here, naming the setting, before any event
        db = self.project.db
        with db.begin() as conn:
            exists = conn.execute(sa.select(ingest_tables.c.seq)
                                  .where(ingest_tables.c.table_name == self._key)).first()
            if exists is None:
                _insert_ignore(conn, self._key)
        with db.begin() as conn:
            self._catch_up(conn)
        self._opened = True
        return self

    @property
    def known_ids(self) -> int:
        return len(self._index)

    def commit(self, batch: pa.Table, rejected: Sequence[Rejected] = (), *,
               within: Callable[[Connection], object] | None = None) -> pa.Table:
        """Write the events of ``batch`` not stored before and record ``rejected``; returns what was written.

        ``within(conn)`` runs inside the same transaction (e.g. to mark dead letters replayed).
        """
        self.open()
        hashes = hash_ids(batch.column(self.schema.event_id)) if batch.num_rows else _EMPTY
        if len(hashes):
            _, first = np.unique(hashes, return_index=True)
            if len(first) < len(hashes):  # the same id twice in one batch: keep the first
                first.sort()
                batch, hashes = batch.take(pa.array(first)), hashes[first]
        new = batch.slice(0, 0)
        new_hashes = _EMPTY
        with self.project.db.begin() as conn:
            seq = self._lock(conn)
            self._catch_up(conn)
            if len(hashes):
                fresh = ~self._index.contains(hashes)
                new, new_hashes = batch.filter(pa.array(fresh)), hashes[fresh]
            if new.num_rows:
                name = f"ingest-{seq:012d}"
                self._remove_orphans(name)
                self.project.offline.write(self.table, new, time_column=self.schema.event_time, batch_id=name)
                conn.execute(ingest_batches.insert().values(
                    table_name=self._key, seq=seq, stream=self.stream, rows=new.num_rows,
                    id_hashes=new_hashes.astype("<u8").tobytes(), created_at=time.time()))
            self.dead_letters.add(conn, schema=self.schema.name, stream=self.stream, rejected=rejected)
            if within is not None:
                within(conn)
        self._index.add(new_hashes)
        self._seen = seq
        self.rows_written += new.num_rows
        self.duplicates_dropped += batch.num_rows - new.num_rows
        return new

    # ---- internals ---------------------------------------------------------------------------

    def _lock(self, conn: Connection) -> int:
        conn.execute(ingest_tables.update().where(ingest_tables.c.table_name == self._key)
                     .values(seq=ingest_tables.c.seq + 1, updated_at=time.time()))
        seq = conn.execute(sa.select(ingest_tables.c.seq).where(ingest_tables.c.table_name == self._key)).scalar()
        if seq is None:  # the row was deleted under us (a reset); recreate it, numbering on from the batches
            _insert_ignore(conn, self._key)
            return self._lock(conn)
        return int(seq)

    def _catch_up(self, conn: Connection) -> None:
        rows = conn.execute(sa.select(ingest_batches.c.seq, ingest_batches.c.id_hashes)
                            .where(ingest_batches.c.table_name == self._key, ingest_batches.c.seq > self._seen)
                            .order_by(ingest_batches.c.seq))
        chunks = []
        for seq, blob in rows:
            chunks.append(np.frombuffer(bytes(blob), dtype="<u8").astype(np.uint64))
            self._seen = max(self._seen, int(seq))
        if chunks:
            self._index.add(np.concatenate(chunks))

    def _remove_orphans(self, name: str) -> None:
        """Delete files a writer that crashed before committing left under this batch name."""
        self.project.offline.remove_batch(self.table, name)


def _insert_ignore(conn: Connection, table_name: str) -> None:
    """The table's lock row, its sequence at the last committed batch: a row recreated after a reset must
    not name a new batch as an earlier one (whose files would be taken for a crashed writer's and removed)."""
    last = conn.execute(sa.select(sa.func.max(ingest_batches.c.seq))
                        .where(ingest_batches.c.table_name == table_name)).scalar()
    values = {"table_name": table_name, "seq": int(last or 0), "updated_at": time.time()}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(ingest_tables).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(ingest_tables).values(**values).on_conflict_do_nothing())
