"""Redis Streams (``redis://HOST:PORT/DB``): a consumer group acked with XACK after the write, and XADD.

The stream key is the stream name (``prefix=`` puts it under a namespace). Each
event is one entry with a single field ``data``. A consumer first re-reads its
own pending entries (a restart under the same name), and every ``claim_every``
seconds claims entries another member left pending longer than ``claim_idle``
seconds (XAUTOCLAIM), so nothing a dead consumer held is lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from modelmill.config import mask_url
from modelmill.errors import BackendUnavailable
from modelmill.ingest.source import Polled, Publisher, Source

__all__ = ["RedisStreamPublisher", "RedisStreamSource"]

FIELD = b"data"


def _client(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BackendUnavailable("redis", mask_url(url), str(exc)) from exc
    return client


class RedisStreamSource(Source):
    """Consumer ``consumer`` of group ``group`` on the stream key ``prefix + stream``."""

    def __init__(self, url: str, *, stream: str, group: str = "modelmill", consumer: str = "consumer",
                 prefix: str = "", claim_idle: float = 30.0, claim_every: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.key = prefix + stream
        self.claim_idle = claim_idle
        self.claim_every = claim_every
        self._client: Any = None
        self._own_pending = True
        self._claimed_at = 0.0

    def open(self) -> RedisStreamSource:
        if self._client is None:
            import redis

            self._client = _client(self.url)
            try:
                self._client.xgroup_create(self.key, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._own_pending = True
            self._claimed_at = time.monotonic()
        return self

    @property
    def redelivery_after(self) -> float | None:
        return self.claim_idle

    def poll(self, max_events: int, timeout: float) -> Polled:
        if self._client is None:
            self.open()
        entries: list[Any] = []
        if self._own_pending:  # what this consumer name read but never acked (before a restart)
            reply = self._client.xreadgroup(self.group, self.consumer, {self.key: "0"}, count=max_events)
            entries = reply[0][1] if reply else []
            if not entries:
                self._own_pending = False
        if not entries and time.monotonic() - self._claimed_at > self.claim_every:
            self._claimed_at = time.monotonic()
            reply = self._client.xautoclaim(self.key, self.group, self.consumer,
                                            min_idle_time=int(self.claim_idle * 1000), start_id="0-0",
                                            count=max_events)
            entries = reply[1] if reply else []
        if not entries:
            block = int(timeout * 1000) if timeout > 0 else None
            reply = self._client.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=max_events,
                                            block=block)
            entries = reply[0][1] if reply else []
        ids = []
        payloads = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                continue
            ids.append(entry_id)
            payloads.append(fields.get(FIELD) or next(iter(fields.values()), b""))
        deleted = [e[0] for e in entries if e[1] is None]
        if deleted:
            self._client.xack(self.key, self.group, *deleted)
        return Polled(payloads, ids)

    def ack(self, polled: Sequence[Polled]) -> None:
        ids = [i for p in polled for i in (p.token or ())]
        if not ids:
            return
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(ids), 10_000):
            pipe.xack(self.key, self.group, *ids[start:start + 10_000])
        pipe.execute()

    def lag(self) -> int | None:
        if self._client is None:
            return None
        for g in self._client.xinfo_groups(self.key):
            if g.get("name") in (self.group, self.group.encode()):
                lag = g.get("lag")
                return int(lag) if lag is not None else None
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RedisStreamPublisher(Publisher):
    """XADD in pipelined chunks."""

    def __init__(self, url: str, *, stream: str, prefix: str = "", chunk: int = 5_000) -> None:
        self.url = url
        self.stream = stream
        self.key = prefix + stream
        self.chunk = chunk
        self._client: Any = None

    def open(self) -> RedisStreamPublisher:
        if self._client is None:
            self._client = _client(self.url)
        return self

    def publish(self, payloads: Sequence[bytes]) -> None:
        self.open()
        for start in range(0, len(payloads), self.chunk):
            pipe = self._client.pipeline(transaction=False)
            for p in payloads[start:start + self.chunk]:
                pipe.xadd(self.key, {FIELD: p})
            pipe.execute()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
