"""The local append-only log: the embedded default broker (``local:///PATH``), no server needed.

Layout under ``PATH/<stream>/``::

    meta.json                    {"partitions": N}
    p0.log, p1.log, ...          records: <u32 length><u32 crc32><payload>, appended under flock
    p0.tail                      byte offset of the end of the last complete append (crash repair)
    groups/<group>/p0.offset     the group's committed byte offset and event count, replaced atomically
    groups/<group>/p0.lock       held (flock) by the consumer that owns partition 0
    groups/<group>/members/<consumer>.lock   held while a consumer of the group is alive

Several consumers of one group split the partitions between them (each owns at
most ceil(partitions / live consumers)); a partition whose owner dies is taken
over on the next rebalance check, from the committed offset.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from modelmill.errors import InputError, StoreError
from modelmill.ingest.source import Polled, Publisher, Source
from modelmill.ingest.validation import Rejected

__all__ = ["LocalLogPublisher", "LocalLogSource"]

_HEADER = struct.Struct("<II")
_READ_CHUNK = 8 << 20
_MAX_RECORD = 64 << 20  # the largest record a consumer loads into memory, by default
_KEPT = 64 << 10  # bytes of a record past that limit kept in its dead letter
_REBALANCE_EVERY_S = 1.0


def log_root(url: str) -> Path:
    path = url.split("://", 1)[1] if "://" in url else url
    if not path:
        raise InputError("broker", "a local log needs a folder: local:///PATH", url)
    return Path(path)


def _stream_dir(url: str, stream: str, *, partitions: int | None, create: bool) -> tuple[Path, int]:
    folder = log_root(url) / stream
    meta = folder / "meta.json"
    if meta.exists():
        return folder, int(json.loads(meta.read_text())["partitions"])
    if not create:
        return folder, 0
    folder.mkdir(parents=True, exist_ok=True)
    n = partitions or 1
    tmp = folder / f".meta.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"partitions": n}))
    try:
        os.link(tmp, meta)  # first writer wins; a concurrent creator reads the winner's count
    except FileExistsError:
        n = int(json.loads(meta.read_text())["partitions"])
    finally:
        tmp.unlink()
    return folder, n


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _scan(data: bytes | memoryview, start: int, limit: int, max_size: int = 1 << 32) -> tuple[list[bytes], int]:
    """Complete, intact records from ``start`` (at most ``limit``, each at most ``max_size`` bytes); returns
    them and the offset after them."""
    out: list[bytes] = []
    pos = start
    end = len(data)
    unpack = _HEADER.unpack_from
    crc = zlib.crc32
    while len(out) < limit and pos + 8 <= end:
        size, check = unpack(data, pos)
        stop = pos + 8 + size
        if stop > end or size > max_size:
            break
        payload = bytes(data[pos + 8:stop])
        if crc(payload) != check:
            break
        out.append(payload)
        pos = stop
    return out, pos


class LocalLogPublisher(Publisher):
    """Appends to the local log; each :meth:`publish` call is one write per partition, optionally fsynced."""

    def __init__(self, url: str, *, stream: str, partitions: int = 1, fsync: bool = False) -> None:
        self.url = url
        self.stream = stream
        self.partitions = partitions
        self.fsync = fsync
        self._files: list[IO[bytes]] = []
        self._next = 0

    def open(self) -> LocalLogPublisher:
        if self._files:
            return self
        folder, n = _stream_dir(self.url, self.stream, partitions=self.partitions, create=True)
        self.partitions = n
        self._folder = folder
        self._files = [open(folder / f"p{k}.log", "ab") for k in range(n)]  # noqa: SIM115  (held open)
        for k in range(n):
            self._repair(k)
        return self

    def _repair(self, k: int) -> None:
        """Cut a torn record a crashed publisher left at the end of partition ``k``."""
        fh = self._files[k]
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            tail_file = self._folder / f"p{k}.tail"
            start = int(tail_file.read_text()) if tail_file.exists() else 0
            size = os.fstat(fh.fileno()).st_size
            if size == start:
                return
            with open(self._folder / f"p{k}.log", "rb") as rd:
                rd.seek(start)
                data = rd.read()
            pos = 0
            while True:
                records, pos = _scan(data, pos, 1 << 20)
                if not records:
                    break
            if start + pos < size:
                os.truncate(self._folder / f"p{k}.log", start + pos)
            _write_atomic(tail_file, str(start + pos))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(self, payloads: Sequence[bytes]) -> None:
        if not self._files:
            self.open()
        if not payloads:
            return
        n = self.partitions
        size = math.ceil(len(payloads) / n)
        for j in range(n):
            chunk = payloads[j * size:(j + 1) * size]
            if chunk:
                self._append((self._next + j) % n, chunk)
        self._next = (self._next + 1) % n

    def _append(self, k: int, payloads: Sequence[bytes]) -> None:
        pack = _HEADER.pack
        crc = zlib.crc32
        buf = b"".join(pack(len(p), crc(p)) + p for p in payloads)
        fh = self._files[k]
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            os.write(fh.fileno(), buf)  # O_APPEND: lands at the end even with other writers
            if self.fsync:
                os.fsync(fh.fileno())
            _write_atomic(self._folder / f"p{k}.tail", str(os.fstat(fh.fileno()).st_size))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []


class _Partition:
    def __init__(self, k: int, log: IO[bytes], lock: IO[bytes], offset: int, count: int) -> None:
        self.k = k
        self.log = log
        self.lock = lock
        self.offset = offset  # next byte to read
        self.committed = offset
        self.count = count  # events committed, for the lag estimate


class LocalLogSource(Source):
    """Reads the local log as consumer ``consumer`` of ``group``; offsets live beside the log."""

    def __init__(self, url: str, *, stream: str, group: str = "modelmill", consumer: str = "consumer",
                 poll_interval: float = 0.02, max_record_bytes: int = _MAX_RECORD) -> None:
        if isinstance(max_record_bytes, bool) or not isinstance(max_record_bytes, int) or max_record_bytes < 16:
            raise InputError("max_record_bytes", "must be a whole number of at least 16", max_record_bytes)
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.poll_interval = poll_interval
        self.max_record_bytes = max_record_bytes
        self._owned: dict[int, _Partition] = {}
        self._member: IO[bytes] | None = None
        self._outstanding = 0
        self._checked = 0.0
        self._partitions = 0
        self._next_k = 0

    def open(self) -> LocalLogSource:
        if self._member is not None:
            return self
        folder, n = _stream_dir(self.url, self.stream, partitions=None, create=False)
        self._folder = folder
        self._partitions = n
        self._groups = folder / "groups" / self.group
        (self._groups / "members").mkdir(parents=True, exist_ok=True)
        self._member = open(self._groups / "members" / f"{self.consumer}.lock", "wb")  # noqa: SIM115
        try:
            fcntl.flock(self._member, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._member.close()
            self._member = None
            raise StoreError(f"consumer {self.consumer!r} of group {self.group!r} is already running",
                             consumer=self.consumer, group=self.group) from exc
        self._rebalance()
        return self

    def _live_members(self) -> int:
        alive = 0
        for path in (self._groups / "members").glob("*.lock"):
            if path.name == f"{self.consumer}.lock":
                alive += 1
                continue
            with open(path, "rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive += 1
                    continue
                fcntl.flock(fh, fcntl.LOCK_UN)
            path.unlink(missing_ok=True)  # a dead member's file
        return max(alive, 1)

    def _rebalance(self) -> None:
        self._checked = time.monotonic()
        if self._partitions == 0:
            _, self._partitions = _stream_dir(self.url, self.stream, partitions=None, create=False)
        share = math.ceil(self._partitions / self._live_members()) if self._partitions else 0
        while len(self._owned) > share and self._outstanding == 0:
            self._release(max(self._owned))
        for k in range(self._partitions):
            if len(self._owned) >= share:
                break
            if k not in self._owned:
                self._claim(k)

    def _claim(self, k: int) -> None:
        lock = open(self._groups / f"p{k}.lock", "wb")  # noqa: SIM115  (held while owned)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return
        offset, count = 0, 0
        off_file = self._groups / f"p{k}.offset"
        if off_file.exists():
            offset, count = (int(x) for x in off_file.read_text().split())
        log_path = self._folder / f"p{k}.log"
        log_path.touch()
        self._owned[k] = _Partition(k, open(log_path, "rb"), lock, offset, count)  # noqa: SIM115

    def _release(self, k: int) -> None:
        part = self._owned.pop(k)
        part.log.close()
        fcntl.flock(part.lock, fcntl.LOCK_UN)
        part.lock.close()

    def poll(self, max_events: int, timeout: float) -> Polled:
        if self._member is None:
            self.open()
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self._checked > _REBALANCE_EVERY_S:
                self._rebalance()
            payloads: list[bytes] = []
            rejected: list[Rejected] = []
            token: dict[int, tuple[int, int]] = {}
            keys = sorted(self._owned)
            for i in range(len(keys)):  # round-robin the starting partition so none starves
                part = self._owned[keys[(self._next_k + i) % len(keys)]]
                got, refused = self._read(part, max_events - len(payloads) - len(rejected))
                if got or refused:
                    token[part.k] = (part.offset, len(got) + len(refused))
                    payloads.extend(got)
                    rejected.extend(refused)
                if len(payloads) + len(rejected) >= max_events:
                    break
            self._next_k += 1
            if payloads or rejected or time.monotonic() >= deadline:
                self._outstanding += 1 if payloads or rejected else 0
                return Polled(payloads, token, rejected)
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def _read(self, part: _Partition, limit: int) -> tuple[list[bytes], list[Rejected]]:
        """Complete records from the partition's offset: up to ``limit`` of them, or the one record there,
        whatever its size, when it is longer than a window (a record past ``max_record_bytes`` is skipped
        and comes back as a rejection)."""
        part.log.seek(part.offset)
        data = part.log.read(min(_READ_CHUNK, max(1 << 16, limit * 512)))
        records, pos = _scan(data, 0, limit, self.max_record_bytes)
        if records or len(data) < 8:
            part.offset += pos
            return records, []
        size = _HEADER.unpack_from(data, 0)[0]
        if os.fstat(part.log.fileno()).st_size < part.offset + 8 + size:
            return [], []  # still being appended
        if size > self.max_record_bytes:
            return [], self._skip(part, size)
        if 8 + size <= len(data):
            return [], []  # a whole record that fails its checksum: left where it is, as before
        part.log.seek(part.offset)
        records, pos = _scan(part.log.read(8 + size), 0, 1)
        part.offset += pos
        return records, []

    def _skip(self, part: _Partition, size: int) -> list[Rejected]:
        """Move past a record too large to load, checksumming it piece by piece; its first bytes go to the
        dead letters with its size."""
        part.log.seek(part.offset)
        check = _HEADER.unpack(part.log.read(8))[1]
        crc, left, kept = 0, size, b""
        while left:
            piece = part.log.read(min(_READ_CHUNK, left))
            if not piece:
                return []
            if not kept:
                kept = piece[:_KEPT]
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
        if crc != check:
            return []  # damaged, not merely large: left where it is, like any record failing its checksum
        part.offset += 8 + size
        return [Rejected("oversized", f"record is {size} bytes; this consumer loads at most {self.max_record_bytes} "
                         "(max_record_bytes of the local log source); its first bytes are kept here", kept)]

    def ack(self, polled: Sequence[Polled]) -> None:
        latest: dict[int, tuple[int, int]] = {}
        for p in polled:
            if not p.payloads and not p.rejected:
                continue
            self._outstanding = max(0, self._outstanding - 1)
            for k, (offset, n) in (p.token or {}).items():
                prev = latest.get(k, (0, 0))
                latest[k] = (max(prev[0], offset), prev[1] + n)
        for k, (offset, n) in latest.items():
            part = self._owned.get(k)
            if part is None or offset <= part.committed:
                continue
            part.committed = offset
            part.count += n
            _write_atomic(self._groups / f"p{k}.offset", f"{offset} {part.count}")

    def lag(self) -> int | None:
        total = 0.0
        for part in self._owned.values():
            remaining = os.fstat(part.log.fileno()).st_size - part.committed
            if remaining <= 0:
                continue
            avg = part.committed / part.count if part.count else 100.0
            total += remaining / max(avg, 9.0)
        return round(total)

    def close(self) -> None:
        for k in list(self._owned):
            self._release(k)
        if self._member is not None:
            fcntl.flock(self._member, fcntl.LOCK_UN)
            self._member.close()
            (self._groups / "members" / f"{self.consumer}.lock").unlink(missing_ok=True)
            self._member = None


def describe(url: str, stream: str) -> dict[str, Any]:
    """Partition count and size of a local stream (for the CLI)."""
    folder, n = _stream_dir(url, stream, partitions=None, create=False)
    size = sum((folder / f"p{k}.log").stat().st_size for k in range(n) if (folder / f"p{k}.log").exists())
    return {"stream": stream, "partitions": n, "bytes": size}
