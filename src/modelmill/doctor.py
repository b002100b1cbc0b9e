"""Health of every configured backend: reachable or not, why, round-trip latency, schema version.

A backend is ok only when it answers *and* has no problems: a metadata database that answers but has a
schema revision from a newer modelmill, a missing table or column, or a stored value that is not JSON is
reachable and not ok. The artifact and offline stores (a folder or an object store such as S3) are ok when
they list, and take a probe object that reads back the same and is deleted.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from modelmill.config import Settings, mask_url
from modelmill.errors import ModelmillError
from modelmill.store import Database, open_kv

__all__ = ["BackendHealth", "check_all", "check_stores"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackendHealth:
    name: str
    url: str
    reachable: bool
    reason: str = ""
    latency_ms: float | None = None
    problems: tuple[str, ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "ok": self.ok, "reachable": self.reachable, "reason": self.reason,
                               "latency_ms": self.latency_ms, "problems": list(self.problems)}
        out.update(self.details)
        return out


def _timed(name: str, url: str, probe: Callable[[], dict[str, Any] | None]) -> BackendHealth:
    start = time.perf_counter()
    try:
        details = probe() or {}
    except ModelmillError as exc:
        return BackendHealth(name=name, url=mask_url(url), reachable=False, reason=exc.context.get("reason") or exc.message)
    except Exception as exc:  # doctor reports any failure as a reason, never a traceback
        return BackendHealth(name=name, url=mask_url(url), reachable=False, reason=f"{type(exc).__name__}: {exc}")
    ms = round((time.perf_counter() - start) * 1000, 3)
    problems = tuple(details.pop("problems", ()))
    return BackendHealth(name=name, url=mask_url(url), reachable=True, latency_ms=ms, problems=problems,
                         details=details)


def _check_db(url: str) -> dict[str, Any]:
    db = Database(url).open()
    try:
        current, heads = db.schema_version(), db.code_heads()
        return {"schema_version": sorted(current), "schema_current": current == heads,
                "schema_expected": sorted(heads), "problems": db.check()}
    finally:
        db.close()


def _check_kv(url: str) -> dict[str, Any]:
    kv = open_kv(url)
    try:
        kv.ping()
        return {}
    finally:
        kv.close()


def _tcp_banner(url: str, default_port: int) -> dict[str, Any]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2) as s:
        if parts.scheme == "nats":
            s.settimeout(2)
            banner = s.recv(4096)
            if not banner.startswith(b"INFO"):
                raise ConnectionError(f"not a NATS server (got {banner[:20]!r})")
            return {"jetstream": b'"jetstream":true' in banner}
    return {}


def _check_broker(url: str) -> dict[str, Any]:
    scheme = urlsplit(url).scheme
    if scheme == "local":
        return _check_folder(url.split("://", 1)[1])
    if scheme in ("redis", "rediss"):
        return _check_kv(url)
    return _tcp_banner(url, {"nats": 4222, "kafka": 9092}[scheme])


def _check_folder(url: str) -> dict[str, Any]:
    if "://" in url:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        fs.makedirs(root, exist_ok=True)
        fs.ls(root)
        return {}
    os.makedirs(url, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=url):
        pass
    return {}


def _check_store(url: str, key: str) -> dict[str, Any]:
    """An artifact or offline store answers and takes a file: list its root, write, read back and delete a probe
    object (an S3 bucket must exist: it is never created)."""
    from modelmill.store.offline import check_object_store, open_filesystem

    fs, root = open_filesystem(url, key=key)
    return {"protocol": "file" if "://" not in url else url.split("://", 1)[0],
            **check_object_store(fs, root, url, key=key, write=True)}


def check_stores(settings: Settings, *, keys: tuple[str, ...] = ("offline", "artifacts")) -> None:
    """Fail early: raise :class:`ConfigError` naming the first of ``keys`` whose store does not answer.

    ``serve`` and ``ingest run`` call it before they start, so an unreachable object store (a wrong
    ``AWS_ENDPOINT_URL``, a missing bucket, bad credentials) is a message naming the setting, not a server
    that fails its first prediction-log flush. Read-only: it lists each store's root.
    """
    from modelmill.store.offline import check_object_store, open_filesystem

    for key in keys:
        url = getattr(settings, key)
        if "://" not in url:  # a local folder: created on first use
            continue
        fs, root = open_filesystem(url, key=key)
        check_object_store(fs, root, url, key=key)


def check_all(settings: Settings) -> list[BackendHealth]:
    """One :class:`BackendHealth` per configured backend, in a fixed order."""
    return [
        _timed("db", settings.db, lambda: _check_db(settings.db)),
        _timed("online", settings.online, lambda: _check_kv(settings.online)),
        _timed("cache", settings.cache, lambda: {} if settings.cache.startswith("none:") else _check_kv(settings.cache)),
        _timed("broker", settings.broker, lambda: _check_broker(settings.broker)),
        _timed("artifacts", settings.artifacts, lambda: _check_store(settings.artifacts, "artifacts")),
        _timed("offline", settings.offline, lambda: _check_store(settings.offline, "offline")),
    ]
