"""Events out: registry and loop events, kept in an outbox table and POSTed, signed, to webhooks.

An event is written to the outbox (``webhook_deliveries``, one row per configured webhook that wants
it) by :func:`emit`, inside the transaction of the change it reports when the caller has one: a
version registered and its event are committed together or not at all, and a crash after the commit
loses nothing. A :class:`Deliverer` (``modelmill webhooks deliver``, or a phase of ``modelmill loop``)
claims the rows that are due, POSTs each one and records the answer; a receiver that is down or
answers non-2xx is retried with exponential backoff and jitter until ``max_attempts``, and the row is
then ``failed`` with its last error. Delivery is at least once: a receiver dedupes on the event id.

The kinds are the audit trail's action names::

    model.register    a version registered         {model, version, flavor, sha256, run_id}
    alias.set         an alias moved               {model, alias, version, previous, reason}
    alias.delete      an alias removed             {model, alias, previous, reason}
    model.gate        a gate decision              {model, version, accepted, decision, reason, ...}
    rollout.start     a rollout began              {rollout, model, from, to, plan, baseline, ...}
    rollout.advance   a rollout moved a stage on   {rollout, model, from, to, reason, ...}
    rollout.complete  a rollout promoted           {rollout, model, from, to, reason, ...}
    rollout.rollback  a rollout rolled back        {rollout, model, from, to, reason, ...}
    rollout.alias     production moved after one   {rollout, model, note}
    alert.firing      an alert started firing      {rule, fingerprint, labels, annotations, value}
    alert.resolved    an alert resolved            {rule, fingerprint, labels, annotations, value}
    experiment.stop   an experiment decided        {experiment, winner, ...}

The body POSTed is ``{"id", "kind", "at", "subject", "actor", "data"}`` (UTF-8 JSON, the same bytes
at every attempt). The headers::

    Content-Type: application/json
    X-Modelmill-Event: <kind>
    X-Modelmill-Event-Id: <id>           the same for every webhook and every attempt: dedupe on it
    X-Modelmill-Delivery: <outbox row id>
    X-Modelmill-Attempt: <1, 2, ...>
    X-Modelmill-Timestamp: <unix seconds of this attempt>
    X-Modelmill-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

A receiver checks the signature with :func:`verify` (or the same three lines in any language) and
refuses a timestamp older than a few minutes, so that a captured request cannot be replayed later.

    >>> body = b'{"id": "e1"}'
    >>> headers = sign("s3cret", body, timestamp=1700000000)
    >>> verify("s3cret", headers["X-Modelmill-Timestamp"], body, headers["X-Modelmill-Signature"],
    ...        now=1700000010)
    True
    >>> verify("other", headers["X-Modelmill-Timestamp"], body, headers["X-Modelmill-Signature"],
    ...        now=1700000010)
    False

Webhooks are ``[[webhooks]]`` tables of ``modelmill.toml``::

    [[webhooks]]
    name = "ops"                      # default: the URL
    url = "https://hooks.example.com/modelmill"
    secret_env = "OPS_WEBHOOK_SECRET" # or: secret = "..."
    events = ["rollout.*", "alert.firing", "model.gate"]   # default: every kind
    max_attempts = 10                 # then the delivery is failed (default 10)
    backoff_s = 10                    # the first retry's delay; doubles at each attempt (default 10)
    max_backoff_s = 3600              # the longest delay (default 3600)
    timeout_s = 10                    # per request (default 10)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConfigError, InputError
from modelmill.store.tables.events import webhook_deliveries

__all__ = [
    "KINDS",
    "STATUSES",
    "Attempt",
    "Deliverer",
    "Webhook",
    "emit",
    "list_deliveries",
    "load_webhooks",
    "prune",
    "retry_failed",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "model.register", "alias.set", "alias.delete", "model.gate",
    "rollout.start", "rollout.advance", "rollout.complete", "rollout.rollback", "rollout.alias",
    "alert.firing", "alert.resolved", "experiment.stop",
)
STATUSES: tuple[str, ...] = ("pending", "delivering", "delivered", "failed")
SIGNATURE_HEADER = "X-Modelmill-Signature"
TIMESTAMP_HEADER = "X-Modelmill-Timestamp"
_KEYS = {"name", "url", "secret", "secret_env", "events", "max_attempts", "backoff_s", "max_backoff_s", "timeout_s"}
_ERROR_CHARS = 500


# ---- signatures ---------------------------------------------------------------------------------

def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The two signature headers of one attempt (``timestamp`` default: now, in whole seconds)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: signature(secret, ts, body)}


def verify(secret: str, timestamp: str | int | None, body: bytes, signature_header: str | None, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """True only when ``signature_header`` is this body's signature at ``timestamp`` under ``secret`` and
    the timestamp is within ``tolerance_s`` of ``now``; False for anything else (missing, malformed,
    stale, another secret, a changed byte). Compared in constant time."""
    if not secret or timestamp is None or not signature_header:
        return False
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if not math.isfinite(tolerance_s) or abs(current - ts) > tolerance_s:
        return False
    expected = signature(secret, ts, body)
    return hmac.compare_digest(expected.encode(), signature_header.strip().encode())


# ---- configuration ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Webhook:
    """One ``[[webhooks]]`` table, validated."""

    name: str
    url: str
    secret: str = dataclasses.field(repr=False)
    events: tuple[str, ...] = ("*",)
    max_attempts: int = 10
    backoff_s: float = 10.0
    max_backoff_s: float = 3600.0
    timeout_s: float = 10.0

    def wants(self, kind: str) -> bool:
        return any(fnmatch.fnmatchcase(kind, pattern) for pattern in self.events)

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: ``backoff_s * 2**(attempts-1)``,
        at most ``max_backoff_s``, times a jitter between 0.5 and 1 (so that retries do not come in step)."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** max(0, min(attempts - 1, 60)))
        return base * (0.5 + 0.5 * rand())


def load_webhooks(settings: Any, env: Mapping[str, str] | None = None) -> list[Webhook]:
    """The ``[[webhooks]]`` of ``settings``; :class:`ConfigError` naming the key of the first bad value."""
    env = os.environ if env is None else env
    raw = getattr(settings, "extra", {}).get("webhooks")
    if raw is None:
        return []
    if isinstance(raw, Mapping) or not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError("webhooks", raw, "[[webhooks]] tables (an array of tables), each with url and secret")
    out: list[Webhook] = []
    for i, item in enumerate(raw):
        key = f"webhooks[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(key, item, "a table with url and secret or secret_env")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", item[unknown[0]], f"one of the keys {', '.join(sorted(_KEYS))}")
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) < 10:
            raise ConfigError(f"{key}.url", url, "an http(s) URL")
        name = item.get("name", url)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError(f"{key}.name", name, "a non-empty string of at most 200 characters")
        if any(w.name == name for w in out):
            raise ConfigError(f"{key}.name", name, "a name no other [[webhooks]] table has")
        secret = _secret(item, key, env)
        events = item.get("events", ["*"])
        if isinstance(events, str) or not isinstance(events, Sequence) or not events:
            raise ConfigError(f"{key}.events", events, f"a non-empty list of event kinds ({', '.join(KINDS)}) "
                              "or patterns such as 'rollout.*'")
        for pattern in events:
            if not isinstance(pattern, str) or not any(fnmatch.fnmatchcase(k, pattern) for k in KINDS):
                raise ConfigError(f"{key}.events", pattern, f"an event kind ({', '.join(KINDS)}) or a pattern "
                                  "matching one, such as 'rollout.*'")
        numbers = {"max_attempts": _number(item, key, "max_attempts", 10, integer=True),
                   "backoff_s": _number(item, key, "backoff_s", 10.0),
                   "max_backoff_s": _number(item, key, "max_backoff_s", 3600.0),
                   "timeout_s": _number(item, key, "timeout_s", 10.0)}
        if numbers["max_backoff_s"] < numbers["backoff_s"]:
            raise ConfigError(f"{key}.max_backoff_s", numbers["max_backoff_s"], "a number at least backoff_s")
        out.append(Webhook(name=name, url=url, secret=secret, events=tuple(events),
                           max_attempts=int(numbers["max_attempts"]), backoff_s=numbers["backoff_s"],
                           max_backoff_s=numbers["max_backoff_s"], timeout_s=numbers["timeout_s"]))
    return out


def _secret(item: Mapping[str, Any], key: str, env: Mapping[str, str]) -> str:
    if "secret" in item and "secret_env" in item:
        raise ConfigError(f"{key}.secret", "(hidden)", "either secret or secret_env, not both")
    if "secret_env" in item:
        var = item["secret_env"]
        if not isinstance(var, str) or not var:
            raise ConfigError(f"{key}.secret_env", var, "the name of an environment variable")
        value = env.get(var)
        if not value:
            raise ConfigError(f"{key}.secret_env", var, f"the name of a set, non-empty environment variable "
                              f"(${var} is not set)")
        return value
    value = item.get("secret")
    if not isinstance(value, str) or len(value) < 8:
        # The value itself is never shown: it is a secret, even when too short.
        raise ConfigError(f"{key}.secret", "(hidden)" if value else value,
                          "a secret of at least 8 characters (or secret_env naming a variable that holds it)")
    return value


def _number(item: Mapping[str, Any], key: str, name: str, default: float, *, integer: bool = False) -> float:
    value = item.get(name, default)
    ok = (isinstance(value, int) if integer else isinstance(value, int | float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}.{name}", value, "a positive integer" if integer else "a positive number")
    return float(value)


def _webhooks_of(project: Any) -> list[Webhook]:
    settings = getattr(project, "settings", None)
    return [] if settings is None else load_webhooks(settings)


# ---- the outbox ---------------------------------------------------------------------------------

def emit(project: Any, kind: str, data: Mapping[str, Any], *, subject: str = "", actor: str = "",
         conn: Any = None) -> str | None:
    """Put one event in the outbox for every configured webhook that wants ``kind``; its id, or None when
    none does. With ``conn`` the rows are part of the caller's transaction (committed with the change)."""
    if kind not in KINDS:
        raise InputError("kind", f"is not an event kind; use one of {', '.join(KINDS)}", kind)
    hooks = [w for w in _webhooks_of(project) if w.wants(kind)]
    if not hooks:
        return None
    now = time.time()
    event_id = uuid.uuid4().hex
    body = _dumps({"id": event_id, "kind": kind, "at": now, "subject": subject, "actor": actor, "data": dict(data)})
    rows = [{"event_id": event_id, "kind": kind, "webhook": w.name, "url": w.url, "body": body, "status": "pending",
             "attempts": 0, "next_at": now, "created_at": now, "updated_at": now} for w in hooks]
    if conn is not None:
        conn.execute(webhook_deliveries.insert(), rows)
    else:
        with project.db.begin() as own:
            own.execute(webhook_deliveries.insert(), rows)
    return event_id


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, default=str, sort_keys=True)
    except ValueError:  # a NaN or infinity (an alert's value): null, so that the body stays JSON
        return json.dumps(_finite(obj), allow_nan=False, default=str, sort_keys=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def list_deliveries(project: Any, *, status: str | None = None, kind: str | None = None,
                    limit: int = 100) -> dict[str, Any]:
    """``{"deliveries": [...newest first], "counts": {status: n}}``; each delivery with its event."""
    if status is not None and status not in STATUSES:
        raise InputError("status", f"must be one of {', '.join(STATUSES)}", status)
    if kind is not None and kind not in KINDS:
        raise InputError("kind", f"must be one of {', '.join(KINDS)}", kind)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise InputError("limit", "must be an integer from 1 to 10000", limit)
    t = webhook_deliveries
    q = sa.select(t).order_by(t.c.id.desc()).limit(limit)
    if status is not None:
        q = q.where(t.c.status == status)
    if kind is not None:
        q = q.where(t.c.kind == kind)
    with project.db.engine.connect() as conn:
        rows = conn.execute(q).all()
        counts = dict(conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status)).all())
    return {"deliveries": [_delivery(r) for r in rows],
            "counts": {s: int(counts.get(s, 0)) for s in STATUSES}}


def _delivery(r: Any) -> dict[str, Any]:
    try:
        event = json.loads(r.body)
    except ValueError:
        event = {}
    return {"id": r.id, "event_id": r.event_id, "kind": r.kind, "webhook": r.webhook, "url": r.url,
            "status": r.status, "attempts": r.attempts, "next_at": r.next_at, "last_status": r.last_status,
            "last_error": r.last_error, "created_at": r.created_at, "updated_at": r.updated_at,
            "delivered_at": r.delivered_at, "subject": event.get("subject", ""), "data": event.get("data", {})}


def retry_failed(project: Any, ids: Sequence[int] | None = None) -> int:
    """Put failed deliveries (all, or those of ``ids``) back to pending, due now, with their attempts reset."""
    t = webhook_deliveries
    now = time.time()
    q = t.update().where(t.c.status == "failed")
    if ids is not None:
        q = q.where(t.c.id.in_(list(ids)))
    with project.db.begin() as conn:
        return int(conn.execute(q.values(status="pending", attempts=0, next_at=now, updated_at=now,
                                         lease_until=None, claimed_by=None)).rowcount)


def prune(project: Any, *, older_than_s: float, now: float | None = None) -> int:
    """Delete the delivered deliveries delivered more than ``older_than_s`` ago (failed and pending ones stay);
    returns how many went."""
    if isinstance(older_than_s, bool) or not isinstance(older_than_s, int | float) or not older_than_s > 0:
        raise InputError("--older-than", "must be a positive duration", older_than_s)
    t = webhook_deliveries
    cutoff = (time.time() if now is None else now) - older_than_s
    with project.db.begin() as conn:
        return int(conn.execute(t.delete().where(t.c.status == "delivered", t.c.delivered_at < cutoff)).rowcount)


# ---- delivery -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Attempt:
    """What one POST did."""

    id: int
    webhook: str
    kind: str
    attempt: int
    status: str  # delivered, pending (to be retried), failed
    http_status: int | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Deliverer:
    """Claims the due outbox rows and POSTs them; safe to run in several processes over one database.

    A row is claimed by one conditional ``UPDATE`` (pending and due, or delivering with an expired lease),
    so two deliverers never send the same attempt; a deliverer that dies mid-POST leaves its rows to be
    claimed again once their lease (``lease_s``) runs out. ``clock`` and ``rand`` (the jitter) can be
    given for tests; ``client`` is an ``httpx.Client``.
    """

    def __init__(self, project: Any, *, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random, lease_s: float = 120.0, batch: int = 100,
                 client: Any = None, holder: str | None = None) -> None:
        self.project = project
        self.clock = clock
        self.rand = rand
        self.lease_s = lease_s
        self.batch = batch
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._client = client
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Deliverer(holder={self.holder!r})"

    def stop(self) -> None:
        self._stop.set()

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client(follow_redirects=False)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def deliver_once(self, *, budget_s: float | None = None) -> list[Attempt]:
        """One pass: every row due now is claimed, POSTed once and recorded; returns what each attempt did.

        With ``budget_s`` no new row is claimed once that many seconds have passed (the rest wait for the next
        pass), so that a slow receiver cannot hold up a caller such as ``modelmill loop`` for long.
        """
        began = time.monotonic()
        hooks = {w.name: w for w in _webhooks_of(self.project)}
        t = webhook_deliveries
        now = self.clock()
        due = sa.or_(sa.and_(t.c.status == "pending", t.c.next_at <= now),
                     sa.and_(t.c.status == "delivering", t.c.lease_until < now))
        with self.project.db.engine.connect() as conn:
            ids = conn.execute(sa.select(t.c.id).where(due).order_by(t.c.next_at, t.c.id).limit(self.batch)).scalars().all()
        done: list[Attempt] = []
        for rid in ids:
            if self._stop.is_set() or (budget_s is not None and time.monotonic() - began >= budget_s):
                break
            row = self._claim(rid, due, now)
            if row is not None:
                done.append(self._send(row, hooks.get(row.webhook)))
        return done

    def _claim(self, rid: int, due: Any, now: float) -> Any:
        t = webhook_deliveries
        with self.project.db.begin() as conn:
            n = conn.execute(t.update().where(t.c.id == rid, due).values(
                status="delivering", attempts=t.c.attempts + 1, lease_until=now + self.lease_s,
                claimed_by=self.holder, updated_at=now)).rowcount
            if n != 1:
                return None  # another deliverer took it first
            return conn.execute(sa.select(t).where(t.c.id == rid)).one()

    def _send(self, row: Any, hook: Webhook | None) -> Attempt:
        if hook is None:
            gone = f"webhook {row.webhook!r} is no longer configured in [[webhooks]]"
            self._record(row, "failed", None, gone)
            return Attempt(row.id, row.webhook, row.kind, row.attempts, "failed", None, gone)
        body = row.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": _user_agent(),
                   "X-Modelmill-Event": row.kind, "X-Modelmill-Event-Id": row.event_id,
                   "X-Modelmill-Delivery": str(row.id), "X-Modelmill-Attempt": str(row.attempts),
                   **sign(hook.secret, body, timestamp=int(self.clock()))}
        http_status: int | None = None
        error: str | None = None
        try:
            answer = self._http().post(hook.url, content=body, headers=headers, timeout=hook.timeout_s)
            http_status = answer.status_code
            if not 200 <= http_status < 300:
                text = answer.text.strip().replace("\n", " ")
                error = f"HTTP {http_status}" + (f": {text}" if text else "")
        except Exception as exc:  # refused, reset, timed out, bad TLS: all mean "try again later"
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if error is None:
            status = "delivered"
        elif row.attempts >= hook.max_attempts:
            status = "failed"
            log.error("webhook %s: delivery %s (%s) failed after %d attempts: %s", hook.name, row.id, row.kind,
                      row.attempts, error)
        else:
            status = "pending"
        self._record(row, status, http_status, error, retry_in=hook.delay(row.attempts, self.rand))
        return Attempt(row.id, hook.name, row.kind, row.attempts, status, http_status,
                       None if error is None else error[:_ERROR_CHARS])

    def _record(self, row: Any, status: str, http_status: int | None, error: str | None, *,
                retry_in: float = 0.0) -> None:
        t = webhook_deliveries
        now = self.clock()
        values: dict[str, Any] = {"status": status, "last_status": http_status, "updated_at": now,
                                  "lease_until": None, "claimed_by": None,
                                  "last_error": None if error is None else error[:_ERROR_CHARS]}
        if status == "delivered":
            values["delivered_at"] = now
        if status == "pending":
            values["next_at"] = now + retry_in
        with self.project.db.begin() as conn:
            # Only while this deliverer still holds the claim: after a lease ran out, another one owns the row.
            conn.execute(t.update().where(t.c.id == row.id, t.c.claimed_by == self.holder,
                                          t.c.status == "delivering").values(**values))

    def run(self, *, interval_s: float = 2.0, max_seconds: float | None = None, once: bool = False,
            on_pass: Callable[[list[Attempt]], None] | None = None) -> int:
        """Passes every ``interval_s`` until :meth:`stop`, ``max_seconds`` or one pass (``once``); returns the
        number of attempts made."""
        if not interval_s > 0:
            raise InputError("--interval", "must be a positive number of seconds", interval_s)
        if max_seconds is not None and not max_seconds > 0:
            raise InputError("--max-seconds", "must be a positive number of seconds", max_seconds)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        made = 0
        while not self._stop.is_set():
            attempts = self.deliver_once()
            made += len(attempts)
            if on_pass is not None and attempts:
                on_pass(attempts)
            if once or (deadline is not None and time.monotonic() >= deadline):
                break
            wait = interval_s if deadline is None else min(interval_s, max(0.0, deadline - time.monotonic()))
            self._stop.wait(wait)
        return made


def _user_agent() -> str:
    from modelmill import __version__

    return f"modelmill/{__version__}"
