"""Amazon Kinesis Data Streams (``kinesis://HOST:PORT``, or ``kinesis://`` for AWS itself), through boto3.

``kinesis://127.0.0.1:4567`` talks plain HTTP to that endpoint (kinesalite in the tests, LocalStack, a VPC
endpoint behind a proxy); ``kinesis+https://HOST:PORT`` uses TLS; ``kinesis://`` with no host uses AWS's own
endpoint for the region. ``?region=eu-west-1`` picks the region (default: ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, else ``us-east-1``). Credentials come from boto3's usual chain; a URL with a host and
no credentials anywhere gets dummy ones (local emulators accept any).

Kinesis has no consumer groups on the server, so the group lives in the **metadata database** (the project's
``db``, or ``checkpoints=URL``), like the Kinesis Client Library's lease table:

- one row per (stream, group, shard) holds the shard's *lease* (owner, expiry) and its *checkpoint* (the
  sequence number of the last event acked, that is durably written);
- every consumer of the group renews its leases while it polls and claims shards that are free or whose
  lease expired (a consumer killed with SIGKILL loses its shards after ``lease_seconds``), up to its fair
  share of the shards (the group's live consumers are the ones with an unexpired lease or heartbeat);
- a consumer reads a shard from its checkpoint (``AFTER_SEQUENCE_NUMBER``), or from the oldest event kept
  (``TRIM_HORIZON``) when it has none, and moves the checkpoint only on :meth:`KinesisSource.ack`, and only
  while it still holds the lease;
- after a reshard (``SplitShard`` / ``MergeShards``) the parent shard is closed: it is read to its end and
  *finished* once every event of it is acked, and only then are its children leased, so the events of one
  partition key keep their order across the reshard and none is read twice.

The publisher puts records 500 at a time (``PutRecords``) and puts the ones Kinesis refused again, in order,
until every one is accepted. The partition key is ``key(payload)`` when given (the entity key, so that one
entity's events share a shard and reach one consumer), else a counter that spreads events over the shards.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from modelmill.config import mask_url
from modelmill.errors import BackendUnavailable, InputError, StoreError
from modelmill.ingest.source import Polled, Publisher, Source

__all__ = ["KinesisPublisher", "KinesisSource", "client", "delete_stream", "ensure_stream", "leases"]

MAX_RECORD_BYTES = 1 << 20  # Kinesis refuses a record (payload plus partition key) over 1 MiB
_PUT_BATCH = 500  # records per PutRecords call (Kinesis' own limit)
_PUT_BYTES = 5 << 20  # bytes per PutRecords call (Kinesis' own limit)

_meta = sa.MetaData()
leases = sa.Table(
    "kinesis_leases", _meta,
    sa.Column("stream", sa.String(200), primary_key=True),
    sa.Column("grp", sa.String(200), primary_key=True),
    sa.Column("shard", sa.String(128), primary_key=True),
    sa.Column("parents", sa.String(300), nullable=False, default=""),  # "p1,p2": leased only when both are finished
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("expires", sa.Float, nullable=False, default=0.0),
    sa.Column("checkpoint", sa.String(128), nullable=True),  # sequence number of the last acked event
    sa.Column("finished", sa.Boolean, nullable=False, default=False),
)
members = sa.Table(
    "kinesis_members", _meta,
    sa.Column("stream", sa.String(200), primary_key=True),
    sa.Column("grp", sa.String(200), primary_key=True),
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("expires", sa.Float, nullable=False),
)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What a ``kinesis://`` URL says: the endpoint (None: AWS's own) and the region."""

    endpoint: str | None
    region: str


def parse_url(url: str) -> Endpoint:
    """``kinesis://HOST:PORT?region=R`` -> the endpoint and region (:class:`InputError` names what is wrong)."""
    parts = urlsplit(url)
    if parts.scheme not in ("kinesis", "kinesis+https"):
        raise InputError("broker", "a Kinesis URL is kinesis://HOST:PORT, kinesis+https://HOST:PORT or kinesis://",
                         url)
    if parts.path not in ("", "/"):
        raise InputError("broker", "a Kinesis URL names the endpoint only; the stream is the stream name", url)
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"region"})
    if unknown:
        raise InputError("broker", f"unknown Kinesis URL option(s) {', '.join(unknown)}; only region=", url)
    region = (query.get("region") or [""])[0] or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION") or "us-east-1"
    if not parts.netloc:
        return Endpoint(None, region)
    try:
        port = parts.port
    except ValueError as exc:
        raise InputError("broker", f"bad port: {exc}", url) from exc
    if not parts.hostname or port is None:
        raise InputError("broker", "a Kinesis endpoint needs HOST:PORT", url)
    scheme = "https" if parts.scheme == "kinesis+https" else "http"
    return Endpoint(f"{scheme}://{parts.hostname}:{port}", region)


def client(url: str) -> Any:
    """A boto3 Kinesis client for ``url``."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailable("kinesis", mask_url(url), "boto3 is not installed: pip install 'modelmill[kinesis]'"
                                 ) from exc
    ep = parse_url(url)
    session = boto3.session.Session(region_name=ep.region)
    kwargs: dict[str, Any] = {}
    if ep.endpoint is not None and session.get_credentials() is None:
        kwargs = {"aws_access_key_id": "modelmill", "aws_secret_access_key": "modelmill"}
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return session.client("kinesis", endpoint_url=ep.endpoint, config=config, **kwargs)


def _unavailable(url: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable("kinesis", mask_url(url), f"{type(exc).__name__}: {exc}")


def _call(url: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, EndpointConnectionError

    try:
        return fn(**kwargs)
    except (EndpointConnectionError, BotoCoreError) as exc:
        raise _unavailable(url, exc) from exc


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_stream(kinesis: Any, url: str, stream: str, *, shards: int = 1, timeout: float = 60.0) -> dict[str, Any]:
    """The stream's summary, creating it with ``shards`` shards unless it exists; waits until it is ACTIVE."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    created = False
    while True:
        try:
            summary = _call(url, kinesis.describe_stream_summary, StreamName=stream)["StreamDescriptionSummary"]
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException" or created:
                if _code(exc) != "ResourceNotFoundException":
                    raise StoreError(f"could not describe Kinesis stream {stream!r}: {exc}", stream=stream) from exc
                summary = {"StreamStatus": "CREATING"}
            else:
                try:
                    _call(url, kinesis.create_stream, StreamName=stream, ShardCount=shards)
                except ClientError as exc2:
                    if _code(exc2) != "ResourceInUseException":  # created meanwhile by another process
                        raise StoreError(f"could not create Kinesis stream {stream!r}: {exc2}",
                                         stream=stream) from exc2
                created = True
                continue
        if summary["StreamStatus"] in ("ACTIVE", "UPDATING"):
            return dict(summary)
        if time.monotonic() > deadline:
            raise StoreError(f"Kinesis stream {stream!r} is still {summary['StreamStatus']} after {timeout:.0f} s",
                             stream=stream)
        time.sleep(0.1)


def delete_stream(url: str, stream: str) -> None:
    """Delete a stream (tests and benchmarks clean up with this); a missing one is fine."""
    from botocore.exceptions import ClientError

    try:
        client(url).delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise


def list_shards(kinesis: Any, url: str, stream: str) -> list[dict[str, Any]]:
    """Every shard of the stream, open and closed (those still within retention)."""
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = _call(url, kinesis.list_shards, **kwargs)
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


# ---- the consumer group's leases and checkpoints in the metadata database ---------------------------------------

def _database(checkpoints: Any) -> Any:
    from modelmill.store.database import Database

    if isinstance(checkpoints, Database):
        return checkpoints
    if checkpoints is None:
        from modelmill.config import load_settings

        checkpoints = load_settings().db  # the project of the working directory, as every command uses
    if not isinstance(checkpoints, str):
        raise InputError("checkpoints", "must be a metadata database URL or a Database", checkpoints)
    return Database(checkpoints).open()


def _create_tables(engine: sa.engine.Engine) -> None:
    for _ in range(5):
        try:
            _meta.create_all(engine, checkfirst=True)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            time.sleep(0.2)  # created meanwhile by another consumer: look again
    _meta.create_all(engine, checkfirst=True)


def _insert_ignore(conn: sa.engine.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)
    else:  # pragma: no cover - modelmill's metadata database is SQLite or PostgreSQL
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(table.insert(), [row])
            except sa.exc.IntegrityError:
                pass


@dataclasses.dataclass
class _Shard:
    """A shard this consumer holds: where it reads next, what it fetched ahead, what it delivered."""

    id: str
    iterator: str | None = None
    started: bool = False
    buffer: list[tuple[bytes, str]] = dataclasses.field(default_factory=list)  # (payload, sequence number)
    ended: bool = False  # the shard is closed and read to its end
    behind_ms: int | None = None
    delivered: str | None = None  # sequence number of the last event handed out
    acked: str | None = None  # sequence number of the last event acked
    in_flight: int = 0  # polls of this shard not yet acked
    next_fetch: float = 0.0


class KinesisSource(Source):
    """A member of consumer group ``group`` on Kinesis stream ``stream``: leases shards, checkpoints on ack."""

    def __init__(self, url: str, *, stream: str, group: str = "modelmill", consumer: str = "",
                 checkpoints: Any = None, lease_seconds: float = 10.0, shards: int = 1,
                 refresh_seconds: float = 1.0, fetch_limit: int = 10_000) -> None:
        parse_url(url)
        if lease_seconds <= 0 or refresh_seconds <= 0 or not 1 <= fetch_limit <= 10_000:
            raise InputError("lease_seconds", "lease_seconds and refresh_seconds must be > 0, fetch_limit 1-10000",
                             (lease_seconds, refresh_seconds, fetch_limit))
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"c-{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.shards = shards
        self.refresh_seconds = refresh_seconds
        self.fetch_limit = fetch_limit
        self._checkpoints = checkpoints
        self._db: Any = None
        self._kinesis: Any = None
        self._held: dict[str, _Shard] = {}
        self._next_refresh = 0.0
        self._renewed = 0.0
        self._rr = 0

    # ---- connection ----

    def open(self) -> KinesisSource:
        if self._kinesis is not None:
            return self
        kinesis = client(self.url)
        ensure_stream(kinesis, self.url, self.stream, shards=self.shards)
        db = _database(self._checkpoints)
        _create_tables(db.engine)
        self._db, self._kinesis = db, kinesis
        self._held = {}
        self._next_refresh = 0.0
        return self

    @property
    def redelivery_after(self) -> float | None:
        return self.lease_seconds

    def close(self) -> None:
        if self._kinesis is None:
            return
        # Leave the shards to the group now (not after the lease expires): what was polled and not acked is
        # read again from the checkpoint by whoever claims them.
        try:
            with self._db.begin() as conn:
                conn.execute(leases.update().where(*self._mine()).values(owner=None, expires=0.0))
                conn.execute(members.delete().where(members.c.stream == self.stream, members.c.grp == self.group,
                                                    members.c.consumer == self.consumer))
        finally:
            if self._checkpoints is not self._db and not _is_database(self._checkpoints):
                self._db.close()
            self._db = self._kinesis = None
            self._held = {}

    def _mine(self) -> tuple[Any, ...]:
        return (leases.c.stream == self.stream, leases.c.grp == self.group, leases.c.owner == self.consumer)

    # ---- leases ----

    def _refresh(self, now: float) -> None:
        """Learn new shards, renew this consumer's leases, let go of extras and claim its fair share."""
        shards = list_shards(self._kinesis, self.url, self.stream)
        rows = [{"stream": self.stream, "grp": self.group, "shard": s["ShardId"],
                 "parents": ",".join(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p),
                 "owner": None, "expires": 0.0, "checkpoint": None, "finished": False} for s in shards]
        expires = now + self.lease_seconds
        with self._db.begin() as conn:
            _insert_ignore(conn, leases, rows)
            _insert_ignore(conn, members, [{"stream": self.stream, "grp": self.group, "consumer": self.consumer,
                                            "expires": expires}])
            conn.execute(members.update().where(members.c.stream == self.stream, members.c.grp == self.group,
                                                members.c.consumer == self.consumer).values(expires=expires))
            conn.execute(members.delete().where(members.c.stream == self.stream, members.c.grp == self.group,
                                                members.c.expires < now))
            held = set(conn.execute(sa.select(leases.c.shard).where(*self._mine(), leases.c.expires >= now))
                       .scalars())
            conn.execute(leases.update().where(*self._mine(), leases.c.expires >= now).values(expires=expires))
        self._renewed = now
        for lost in set(self._held) - held:  # expired while we were away: someone else may read it now
            del self._held[lost]
        table = self._table()
        finished = {r.shard for r in table if r.finished}
        known = {r.shard for r in table}
        eligible = [r for r in table if not r.finished and all(
            p in finished or p not in known for p in filter(None, r.parents.split(",")))]
        live = max(1, self._live_members(now))
        share = -(-len(eligible) // live)  # ceil
        # Let go of shards beyond the share (only those with nothing in flight), newest consumers get them.
        extras = [sid for sid in self._held if self._held[sid].in_flight == 0][: max(0, len(self._held) - share)]
        if extras:
            with self._db.begin() as conn:
                conn.execute(leases.update().where(*self._mine(), leases.c.shard.in_(extras))
                             .values(owner=None, expires=0.0))
            for sid in extras:
                del self._held[sid]
        for r in eligible:
            if len(self._held) >= share:
                break
            if r.shard in self._held or (r.owner is not None and r.owner != self.consumer and r.expires >= now):
                continue
            with self._db.begin() as conn:
                got = conn.execute(leases.update().where(
                    leases.c.stream == self.stream, leases.c.grp == self.group, leases.c.shard == r.shard,
                    leases.c.finished.is_(False),
                    sa.or_(leases.c.owner.is_(None), leases.c.expires < now, leases.c.owner == self.consumer),
                ).values(owner=self.consumer, expires=expires)).rowcount
            if got:
                self._held[r.shard] = _Shard(r.shard, acked=r.checkpoint, delivered=r.checkpoint)
        self._next_refresh = now + self.refresh_seconds

    def _table(self) -> list[Any]:
        with self._db.engine.connect() as conn:
            return list(conn.execute(sa.select(leases).where(leases.c.stream == self.stream,
                                                             leases.c.grp == self.group).order_by(leases.c.shard)))

    def _live_members(self, now: float) -> int:
        with self._db.engine.connect() as conn:
            names = set(conn.execute(sa.select(members.c.consumer).where(
                members.c.stream == self.stream, members.c.grp == self.group, members.c.expires >= now)).scalars())
            names |= set(conn.execute(sa.select(leases.c.owner).where(
                leases.c.stream == self.stream, leases.c.grp == self.group, leases.c.owner.is_not(None),
                leases.c.expires >= now)).scalars())
        return len(names | {self.consumer})

    # ---- reading ----

    def _fetch(self, shard: _Shard, now: float) -> None:
        from botocore.exceptions import ClientError

        if shard.ended or now < shard.next_fetch:
            return
        try:
            if shard.iterator is None and not shard.started:
                start = shard.delivered or shard.acked
                kwargs: dict[str, Any] = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": start}
                                          if start else {"ShardIteratorType": "TRIM_HORIZON"})
                shard.iterator = _call(self.url, self._kinesis.get_shard_iterator, StreamName=self.stream,
                                       ShardId=shard.id, **kwargs)["ShardIterator"]
                shard.started = True
            if shard.iterator is None:
                shard.ended = True
                return
            out = _call(self.url, self._kinesis.get_records, ShardIterator=shard.iterator, Limit=self.fetch_limit)
        except ClientError as exc:
            code = _code(exc)
            if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                shard.next_fetch = now + 0.5
                return
            if code == "ExpiredIteratorException":
                shard.iterator, shard.started = None, False
                return
            raise StoreError(f"reading Kinesis shard {shard.id} of {self.stream!r} failed: {exc}",
                             stream=self.stream) from exc
        records = out.get("Records", [])
        shard.buffer.extend((r["Data"], r["SequenceNumber"]) for r in records)
        shard.iterator = out.get("NextShardIterator")
        shard.behind_ms = out.get("MillisBehindLatest")
        if shard.iterator is None:
            shard.ended = True
        # Kinesis allows 5 reads a second per shard: an empty read waits a little before the next one.
        shard.next_fetch = 0.0 if records else now + 0.2

    def assignment(self) -> list[str]:
        """The shards this consumer holds the lease of now (as KafkaSource's partitions)."""
        return sorted(self._held)

    def poll(self, max_events: int, timeout: float) -> Polled:
        if self._kinesis is None:
            self.open()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            wall = time.time()
            if now >= self._next_refresh or wall - self._renewed > self.lease_seconds / 3:
                self._refresh(wall)
            payloads: list[bytes] = []
            ends: dict[str, str] = {}
            ids = list(self._held)
            if ids:
                self._rr = (self._rr + 1) % len(ids)
                ids = ids[self._rr:] + ids[: self._rr]  # no shard starves the others
            for sid in ids:
                shard = self._held[sid]
                if not shard.buffer:
                    self._fetch(shard, now)
                take = shard.buffer[: max_events - len(payloads)]
                if take:
                    del shard.buffer[: len(take)]
                    payloads.extend(p for p, _ in take)
                    shard.delivered = ends[sid] = take[-1][1]
                    shard.in_flight += 1
                if len(payloads) >= max_events:
                    break
            if ends:
                return Polled(payloads, ends)
            self._finish_ended()
            if time.monotonic() >= deadline:
                return Polled([], {})
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def ack(self, polled: Sequence[Polled]) -> None:
        ends: dict[str, str] = {}
        for p in polled:
            for sid, seq in (p.token or {}).items():
                if sid not in ends or int(seq) > int(ends[sid]):
                    ends[sid] = seq
                if sid in self._held:
                    self._held[sid].in_flight = max(0, self._held[sid].in_flight - 1)
        if not ends:
            return
        now = time.time()
        with self._db.begin() as conn:
            for sid, seq in ends.items():
                # Only while the lease is ours: a shard that moved to another consumer is read again from its
                # checkpoint there, and the sink drops what is already written.
                moved = conn.execute(leases.update().where(*self._mine(), leases.c.shard == sid,
                                                           leases.c.expires >= now)
                                     .values(checkpoint=seq)).rowcount
                if moved and sid in self._held:
                    self._held[sid].acked = seq
        self._finish_ended()

    def _finish_ended(self) -> None:
        """Mark finished the closed shards read to the end with every event acked, so their children start."""
        done = [s.id for s in self._held.values() if s.ended and not s.buffer and s.in_flight == 0
                and s.acked == s.delivered]
        if not done:
            return
        with self._db.begin() as conn:
            conn.execute(leases.update().where(*self._mine(), leases.c.shard.in_(done))
                         .values(finished=True, owner=None, expires=0.0))
        for sid in done:
            del self._held[sid]
        self._next_refresh = 0.0  # the children are free now

    def lag(self) -> int | None:
        """Events fetched but not yet delivered, when every held shard is read to its tip; else None.

        Kinesis counts a backlog in milliseconds, not events: past the fetched ones the count is unknown.
        """
        if self._kinesis is None:
            return None
        if any(s.behind_ms is None or s.behind_ms > 0 for s in self._held.values() if not s.ended):
            return None
        return sum(len(s.buffer) for s in self._held.values())


def _is_database(obj: Any) -> bool:
    from modelmill.store.database import Database

    return isinstance(obj, Database)


class KinesisPublisher(Publisher):
    """Puts records on stream ``stream`` (created with ``shards`` shards if missing); waits for every one."""

    def __init__(self, url: str, *, stream: str, shards: int = 1, key: Callable[[bytes], str] | None = None,
                 attempts: int = 20) -> None:
        parse_url(url)
        if shards < 1:
            raise InputError("shards", "must be >= 1", shards)
        self.url = url
        self.stream = stream
        self.shards = shards
        self.key = key
        self.attempts = attempts
        self._kinesis: Any = None
        self._counter = itertools.count()

    def open(self) -> KinesisPublisher:
        if self._kinesis is None:
            kinesis = client(self.url)
            ensure_stream(kinesis, self.url, self.stream, shards=self.shards)
            self._kinesis = kinesis
        return self

    def _records(self, payloads: Sequence[bytes]) -> list[dict[str, Any]]:
        out = []
        for i, p in enumerate(payloads):
            key = self.key(p) if self.key is not None else str(next(self._counter))
            if not key or len(key) > 256:
                raise InputError("key", f"event {i}: a partition key must be 1-256 characters", key)
            if len(p) + len(key.encode()) > MAX_RECORD_BYTES:
                raise InputError("payload", f"event {i} is {len(p)} bytes; Kinesis accepts at most "
                                            f"{MAX_RECORD_BYTES} with its partition key")
            out.append({"Data": bytes(p), "PartitionKey": key})
        return out

    def publish(self, payloads: Sequence[bytes]) -> None:
        self.open()
        records = self._records(payloads)
        start = 0
        while start < len(records):
            chunk: list[dict[str, Any]] = []
            size = 0
            while start + len(chunk) < len(records) and len(chunk) < _PUT_BATCH:
                rec = records[start + len(chunk)]
                n = len(rec["Data"]) + len(rec["PartitionKey"])
                if chunk and size + n > _PUT_BYTES:
                    break
                chunk.append(rec)
                size += n
            self._put(chunk)
            start += len(chunk)

    def _put(self, chunk: list[dict[str, Any]]) -> None:
        """Put ``chunk``; refused records (throttling) go again, in their order, with backoff."""
        from botocore.exceptions import ClientError

        pending = chunk
        for attempt in range(self.attempts):
            try:
                out = _call(self.url, self._kinesis.put_records, StreamName=self.stream, Records=pending)
            except ClientError as exc:
                if _code(exc) not in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                    raise StoreError(f"putting records on Kinesis stream {self.stream!r} failed: {exc}",
                                     stream=self.stream) from exc
                time.sleep(min(2.0, 0.05 * 2 ** attempt))
                continue
            if not out.get("FailedRecordCount"):
                return
            pending = [rec for rec, res in zip(pending, out["Records"], strict=True) if "ErrorCode" in res]
            time.sleep(min(2.0, 0.05 * 2 ** attempt))
        raise BackendUnavailable("kinesis", mask_url(self.url),
                                 f"{len(pending)} records still refused after {self.attempts} attempts")

    def close(self) -> None:
        self._kinesis = None
