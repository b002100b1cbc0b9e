"""One leader at a time: the lease, two loops on one database, takeover after expiry, fencing.

Every test runs on SQLite and on PostgreSQL; time is a list the test moves (no test waits).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.loop import Lease, Loop
from modelmill.store.tables.training import triggers
from tests.loop import pipelines
from tests.loop.helpers import config, log_traffic, open_project


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def trigger_states(project: object) -> list[str]:
    with project.db.engine.connect() as conn:  # type: ignore[attr-defined]
        return [r.status for r in conn.execute(sa.select(triggers.c.status).order_by(triggers.c.id))]


def test_the_lease_has_one_holder_until_it_expires(tmp_path: Path, db: str | None) -> None:
    now = [1000.0]
    with open_project(tmp_path / "home", db) as project:
        a = Lease(project.db, holder="a", ttl=30, clock=lambda: now[0])
        b = Lease(project.db, holder="b", ttl=30, clock=lambda: now[0])
        assert a.acquire() and not b.acquire()
        assert (a.epoch, b.epoch) == (1, None)
        now[0] += 20
        assert a.renew() and not b.acquire()  # renewed at 1020: lasts until 1050
        now[0] += 29
        assert not b.acquire()
        now[0] += 2  # 1051: expired
        assert b.acquire() and b.epoch == 2
        assert not a.renew() and not a.held  # a learns it lost the lease, and stays out
        assert not a.acquire()
        info = b.info()
        assert info is not None and (info["holder"], info["epoch"], info["live"]) == ("b", 2, True)
        assert not a.record_round({"at": now[0]})  # a fenced write of a lost leader changes nothing
        assert b.record_round({"at": now[0]}) and b.info()["last_round"] == {"at": now[0]}  # type: ignore[index]
        b.release()
        assert a.acquire() and a.epoch == 3  # released: taken at once, no wait for the expiry


def test_two_loops_only_the_leader_acts_and_the_follower_takes_over(tmp_path: Path, db: str | None) -> None:
    now = [1000.0]
    with open_project(tmp_path / "home", db) as project:
        pipelines.first_version(project)
        log_traffic(project)
        a = Loop(project, config(), lease=Lease(project.db, holder="a", ttl=30, clock=lambda: now[0]))
        b = Loop(project, config(), lease=Lease(project.db, holder="b", ttl=30, clock=lambda: now[0]))
        first = a.round()
        assert first["leader"] is True and first["models"]["clicks"]["decisions"][0]["status"] == "rolling_out"
        follower = b.round()
        assert {k: v for k, v in follower.items() if k != "at"} == {
            "holder": "b", "leader": False, "models": {}, "following": "a"}
        assert trigger_states(project) == ["finished"]

        now[0] += 31  # a stopped renewing (it died, or stalled): its lease expires
        taken = b.round()
        assert taken["leader"] is True and taken["epoch"] == 2
        assert taken["models"]["clicks"]["rollout"]["action"] == "hold"  # b steps a's rollout
        late = a.round()
        assert late["leader"] is False and late["following"] == "b"
        assert trigger_states(project) == ["finished"]


class _Stalls(Lease):
    """A leader that stalls after its first phases: meanwhile the other loop takes the lease over."""

    def __init__(self, *args: object, after: int, rival: Lease, now: list[float], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.after, self.rival, self.now, self.calls = after, rival, now, 0

    def renew(self) -> bool:
        self.calls += 1
        if self.calls == self.after:
            self.now[0] += 31
            assert self.rival.acquire()
        return super().renew()


def test_a_leader_that_lost_its_lease_mid_round_stops_acting(tmp_path: Path, db: str | None) -> None:
    now = [1000.0]
    with open_project(tmp_path / "home", db) as project:
        pipelines.first_version(project)
        log_traffic(project)
        rival = Lease(project.db, holder="b", ttl=30, clock=lambda: now[0])
        # Renewals: before the monitor phase (1), before the scheduler phase (2): the stall comes there.
        stalling = _Stalls(project.db, holder="a", ttl=30, clock=lambda: now[0], after=2, rival=rival, now=now)
        out = Loop(project, config(), lease=stalling).round()
        assert out["lost"] is True and out["leader"] is False
        assert "scheduler" not in out and "decisions" not in out["models"]["clicks"]
        assert trigger_states(project) == ["pending"]  # queued by its monitor, never run by it

        taken = Loop(project, config(), lease=rival).round()  # the new leader goes on from the database
        assert taken["leader"] is True and [t["status"] for t in taken["scheduler"]] == ["finished"]
        assert taken["models"]["clicks"]["decisions"][0]["status"] == "rolling_out"
        assert trigger_states(project) == ["finished"]
