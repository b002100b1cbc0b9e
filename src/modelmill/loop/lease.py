"""One leader at a time: a lease row in the metadata database, with a holder, an expiry and an epoch.

:meth:`Lease.acquire` takes the lease when it is free, expired, or already this holder's; taking it from
another holder adds 1 to ``epoch``, the fencing token. :meth:`Lease.renew` extends it only while the row
still names this holder *and* the epoch it took, so a leader that lost its lease (it stalled past the expiry
and a follower took over) learns so at its next renewal and stops acting, even if it is already running
again. Every change is one conditional ``UPDATE`` (or the first ``INSERT``), which PostgreSQL row-locks and
SQLite serialises: two processes never both win.

Expiry is judged by the caller's clock: hosts running ``modelmill loop`` need clocks within a small part of
the lease's ``ttl`` of each other (NTP does far better).

    >>> import tempfile
    >>> from modelmill.store import Database
    >>> db = Database(f"sqlite:///{tempfile.mkdtemp()}/m.db").ensure_schema()
    >>> now = [0.0]
    >>> a = Lease(db, holder="a", ttl=30, clock=lambda: now[0])
    >>> b = Lease(db, holder="b", ttl=30, clock=lambda: now[0])
    >>> a.acquire(), b.acquire()
    (True, False)
    >>> now[0] = 31.0
    >>> b.acquire(), a.renew()
    (True, False)
    >>> b.epoch
    2
    >>> db.close()
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from modelmill.errors import InputError
from modelmill.store.tables.loop import loop_leases

__all__ = ["DEFAULT_LEASE", "Lease", "default_holder"]

DEFAULT_LEASE = "loop"


def default_holder() -> str:
    """``host:pid:random``: unique per process, readable in ``modelmill loop status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """The lease ``name`` as seen by ``holder``. The constructor does no I/O."""

    def __init__(self, db: Any, *, holder: str | None = None, name: str = DEFAULT_LEASE, ttl: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not ttl > 0:
            raise InputError("lease ttl", "must be a positive number of seconds", ttl)
        self.db = db
        self.holder = holder or default_holder()
        self.name = name
        self.ttl = float(ttl)
        self.clock = clock
        self.epoch: int | None = None  # the epoch this holder took; None while it holds nothing

    def __repr__(self) -> str:
        return f"Lease(name={self.name!r}, holder={self.holder!r}, ttl={self.ttl:g}, epoch={self.epoch})"

    @property
    def held(self) -> bool:
        """Whether the last acquire or renew won (no I/O: call :meth:`renew` to know now)."""
        return self.epoch is not None

    def acquire(self) -> bool:
        """Take or keep the lease; False while another holder's lease runs."""
        now = self.clock()
        t = loop_leases.c
        with self.db.begin() as conn:
            row = conn.execute(sa.select(loop_leases).where(t.name == self.name)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(loop_leases.insert().values(
                            name=self.name, holder=self.holder, epoch=1, acquired_at=now, renewed_at=now,
                            expires_at=now + self.ttl))
                except sa.exc.IntegrityError:
                    self.epoch = None
                    return False  # another process inserted it first: it holds the lease
                self.epoch = 1
                return True
            if row.holder == self.holder and self.epoch == row.epoch:
                won = conn.execute(loop_leases.update().where(
                    t.name == self.name, t.holder == self.holder, t.epoch == row.epoch,
                ).values(renewed_at=now, expires_at=now + self.ttl)).rowcount
                self.epoch = row.epoch if won == 1 else None
                return won == 1
            if row.expires_at > now:
                self.epoch = None
                return False
            # Expired (or ours from an earlier life of this holder id): take it, with a new epoch.
            won = conn.execute(loop_leases.update().where(
                t.name == self.name, t.epoch == row.epoch, t.expires_at <= now,
            ).values(holder=self.holder, epoch=row.epoch + 1, acquired_at=now, renewed_at=now,
                     expires_at=now + self.ttl)).rowcount
            self.epoch = row.epoch + 1 if won == 1 else None
            return won == 1

    def renew(self) -> bool:
        """Extend the lease; False (and :attr:`held` false from then on) when it is no longer this holder's."""
        if self.epoch is None:
            return False
        now = self.clock()
        t = loop_leases.c
        with self.db.begin() as conn:
            won = conn.execute(loop_leases.update().where(
                t.name == self.name, t.holder == self.holder, t.epoch == self.epoch,
            ).values(renewed_at=now, expires_at=now + self.ttl)).rowcount
        if won != 1:
            self.epoch = None
        return won == 1

    def release(self) -> None:
        """Give the lease up now (a follower takes over at its next try instead of after the expiry)."""
        if self.epoch is None:
            return
        t = loop_leases.c
        with self.db.begin() as conn:
            conn.execute(loop_leases.update().where(
                t.name == self.name, t.holder == self.holder, t.epoch == self.epoch,
            ).values(expires_at=self.clock() - 1.0))
        self.epoch = None

    def record_round(self, summary: Mapping[str, Any]) -> bool:
        """Store the round's summary on the lease row, fenced like a renewal; False when the lease is lost."""
        if self.epoch is None:
            return False
        t = loop_leases.c
        with self.db.begin() as conn:
            won = conn.execute(loop_leases.update().where(
                t.name == self.name, t.holder == self.holder, t.epoch == self.epoch,
            ).values(last_round_at=self.clock(), last_round=dict(summary))).rowcount
        if won != 1:
            self.epoch = None
        return won == 1

    def info(self) -> dict[str, Any] | None:
        """The stored lease (holder, epoch, times, last round) and whether it is live now; None before any."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(loop_leases).where(loop_leases.c.name == self.name)).first()
        if row is None:
            return None
        return {"name": row.name, "holder": row.holder, "epoch": row.epoch, "acquired_at": row.acquired_at,
                "renewed_at": row.renewed_at, "expires_at": row.expires_at,
                "live": row.expires_at > self.clock(), "last_round_at": row.last_round_at,
                "last_round": row.last_round}
