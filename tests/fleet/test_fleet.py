"""A fleet on real network separation (issue #19, item 2): three ``modelmill serve`` hosts, each in its own network
namespace, behind a real HAProxy with health checks on ``/v2/health/ready``, sharing a throwaway PostgreSQL
(registry, routes, rollouts) and Redis (online store, cache) that listen on the bridge address, so the hosts
reach them over their veth links.

The shared offline store (the prediction log, the labels) is on S3: a throwaway moto server (scripts/moto.sh,
tests/s3.py) on the bridge address too, where each host writes its own uniquely named Parquet objects. With
``MODELMILL_FLEET_S3=0`` it is a shared folder instead (the namespaces share the filesystem). The artifacts stay
in the shared project folder.

Every test is slow (the fleet takes about half a minute to start on two cores): ``.ci/run`` runs them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelmill.config import load_settings
from modelmill.errors import NotFoundError
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.rollout import Guardrails, RolloutController, ServingGuardrails
from modelmill.serving import RouteTable, Variant
from modelmill.store.feedback import write_labels
from tests.fleet.conftest import register_models
from tests.fleet.netfleet import HOST_PORT, Fleet, Load
from tests.rollout.test_end_to_end import assert_canary_share_within_stage, assert_errors_within_stage
from tests.serving.conftest import COLUMNS, ServeProcess, open_project_at

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RELOAD_S = 0.5  # [serving] reload_interval_s of the fleet (tests.fleet.netfleet.SERVING_TOML)
# A loaded two-core machine runs eight processes here: the slack for a replica's reload tick to be scheduled
SLACK_S = 2.0


@pytest.fixture
def project(fleet: Fleet) -> Iterator[Project]:
    clear_cache()
    p = open_project_at(fleet.root)
    yield p
    p.close()


def _body(x: np.ndarray, rid: str | None = None, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                       for c, v in zip(COLUMNS, x, strict=True)]}
    if rid is not None:
        body["id"] = rid
    if user is not None:
        body["parameters"] = {"routing_key": user}
    return body


def _version(client: httpx.Client, url: str, model: str) -> str:
    r = client.post(f"{url}/v2/models/{model}/infer", json=_body(np.zeros(len(COLUMNS))))
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_every_host_is_in_its_own_namespace_and_haproxy_spreads_the_load(fleet: Fleet) -> None:
    assert fleet.balancer is not None
    assert fleet.balancer.stats() == {"host1": "UP", "host2": "UP", "host3": "UP"}
    for host in fleet.hosts:  # each server is listening in its namespace only, on the same port
        inside = subprocess.run(["ip", "netns", "exec", host.ns, "ss", "-Htln", f"sport = :{HOST_PORT}"],
                                capture_output=True, text=True, timeout=30).stdout
        assert f"{host.address}:{HOST_PORT}" in inside, inside
    root_ns = subprocess.run(["ss", "-Htln", f"sport = :{HOST_PORT}"], capture_output=True, text=True, timeout=30)
    assert not any(h.address in root_ns.stdout for h in fleet.hosts)
    with httpx.Client(trust_env=False, timeout=10) as c:
        served = Counter(c.post(f"{fleet.url}/v2/models/clf/infer", json=_body(np.zeros(len(COLUMNS))))
                         .headers["x-served-by"] for _ in range(30))
    assert served == {"host1": 10, "host2": 10, "host3": 10}  # round robin


def test_an_alias_change_reaches_every_replica_within_the_reload_interval(fleet: Fleet, project: Project) -> None:
    """(c) Each replica is asked directly (its namespace's address, not through HAProxy) until it answers the new
    version; the delay is measured per replica. A route change (pinning a version) reaches them the same way."""
    reg = Registry(project)
    with httpx.Client(trust_env=False, timeout=5) as c:
        assert {h.name: _version(c, h.url, "alias") for h in fleet.hosts} == dict.fromkeys(
            (h.name for h in fleet.hosts), "1")
        try:
            for change, expect in ((lambda: reg.set_alias("alias", "production", 2), "2"),
                                   (lambda: RouteTable(project).set("alias", [Variant("pinned", 1, 1.0)]), "1")):
                change()
                changed = time.monotonic()
                seen: dict[str, float] = {}
                while len(seen) < len(fleet.hosts) and time.monotonic() - changed < 30:
                    for h in fleet.hosts:
                        if h.name not in seen and _version(c, h.url, "alias") == expect:
                            seen[h.name] = time.monotonic() - changed
                print(f"version {expect} reached " + ", ".join(f"{k} in {v:.3f} s" for k, v in sorted(seen.items())))
                assert sorted(seen) == ["host1", "host2", "host3"]
                assert max(seen.values()) <= RELOAD_S + SLACK_S, seen
                # none goes back: every replica, and HAProxy, answer the new version from now on
                for h in fleet.hosts:
                    assert {_version(c, h.url, "alias") for _ in range(5)} == {expect}
                assert {_version(c, fleet.url, "alias") for _ in range(9)} == {expect}
        finally:
            RouteTable(project).delete("alias")
            reg.set_alias("alias", "production", 1)


def _requests(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"mon-{seed}-{i}" for i in range(n)], rng.normal(size=(n, len(COLUMNS)))


def _logged(project: Project, model: str) -> int:
    offline = project.offline
    if not offline.exists("predictions"):
        return 0
    return offline.read("predictions", columns=["request_id"], where=f"model = '{model}'").num_rows


def _monitor(root: Path) -> dict[str, Any]:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MODELMILL_")}
    done = subprocess.run([sys.executable, "-m", "modelmill", "monitor", "--once", "--json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1, 3), done.stderr  # pass / fail / no data: each prints its JSON
    return dict(json.loads(done.stdout))


def _of(result: dict[str, Any], root: Path, model: str) -> dict[str, Any]:
    """What a monitor round says about ``model``: its label metrics, its drift window (as printed, and the
    per-feature statistics stored in the window's row), without times."""
    from modelmill.store.tables.monitoring import monitoring_windows

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("window_start", "window_end", "at")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    clear_cache()
    project = open_project_at(root)
    try:
        t = monitoring_windows
        with project.db.engine.connect() as conn:
            stored = [dict(r._mapping)["drift"] for r in conn.execute(sa.select(t).where(t.c.model == model))]
    finally:
        project.close()
    return {"performance": strip([r for r in result["performance"] if r["model"] == model]),
            "quality": strip([r for r in result["quality"] if r["model"] == model]),
            "windows": strip([r for r in result["windows"] if r["model"] == model]),
            "stored_drift": stored}


def test_monitoring_of_the_fleet_equals_a_single_hosts_on_the_same_requests(fleet: Fleet, project: Project,
                                                                             tmp_path: Path) -> None:
    """(d) The same 600 requests (ids and inputs), through HAProxy to the three hosts (their shared log) and to one
    host alone (its log on local disk); the
    same delayed labels; then ``monitor --once --json`` in each project: the label-joined metrics (AUC, log loss,
    accuracy, with their counts) and the drift of model ``mon`` are equal."""
    assert project.settings.offline.startswith("s3://") == fleet.s3  # where the fleet's log and labels are
    ids, X = _requests(600, seed=7)
    single_root = tmp_path / "single"
    single_root.mkdir()
    (single_root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.5\n'
                                                "log_flush_interval_s = 0.2\n")
    clear_cache()
    single = Project(load_settings(cwd=single_root))
    try:
        register_models(single)
    finally:
        single.close()
    proc = ServeProcess(single_root, "--no-cache").wait_ready()
    try:
        served: Counter[str] = Counter()
        with httpx.Client(trust_env=False, timeout=10) as c:
            for url, count in ((fleet.url, True), (proc.url, False)):
                for rid, x in zip(ids, X, strict=True):
                    r = c.post(f"{url}/v2/models/mon/infer", json=_body(x, rid))
                    assert r.status_code == 200, r.text
                    if count:
                        served[r.headers["x-served-by"]] += 1
    finally:
        proc.stop()
    assert set(served) == {"host1", "host2", "host3"} and min(served.values()) >= 150, served
    clear_cache()
    single = Project(load_settings(cwd=single_root))
    try:
        deadline = time.monotonic() + 60
        while (_logged(project, "mon"), _logged(single, "mon")) != (600, 600) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (_logged(project, "mon"), _logged(single, "mon")) == (600, 600)  # every host flushed its log
        w = np.random.default_rng(8).normal(size=len(COLUMNS))
        ts = pd.Timestamp.now(tz="UTC").isoformat()
        labels = [{"id": rid, "label": int(x @ w > 0), "ts": ts} for rid, x in zip(ids, X, strict=True)][::2]
        for p in (project, single):
            counts = write_labels(p.offline, "mon", labels)
            assert counts.unknown == 0 and counts.duplicates == 0
    finally:
        single.close()
    fleet_view = _of(_monitor(fleet.root), fleet.root, "mon")
    single_view = _of(_monitor(single_root), single_root, "mon")
    print(json.dumps(fleet_view, indent=1, default=str)[:3000])
    [row] = fleet_view["performance"]
    assert row["n"] == 300 and row["status"] == "measured"
    assert {m["status"] for m in row["metrics"].values()} == {"measured"}
    [window] = fleet_view["windows"]
    assert window["n_rows"] == 600 and window["status"] in ("pass", "fail") and window["drift_share"] is not None
    assert len(fleet_view["stored_drift"]) == 1 and fleet_view["stored_drift"][0]
    assert fleet_view == single_view


def test_one_controller_sees_the_whole_fleet_and_rolls_back_a_failing_canary(fleet: Fleet, project: Project) -> None:
    """(a) One rollout controller, no ``/metrics`` URL: it counts every replica's requests and failures in the
    shared prediction log. The candidate (clf v3) fails on about 10% of inputs; it is rolled back during the 5%
    stage, and the share of users' requests that failed, across the fleet, is what 5% x 10% implies."""
    source = _KeepsLastLog(project, settle_s=1.0)
    ctl = RolloutController(project, source=source)
    load = Load(fleet.url, "clf", clients=3, max_seconds=300, seed=11, ids="a").start()
    try:
        started = time.time()
        # Errors are what this test is about: latency gets a wide margin (three replicas, the controller and
        # the load generator share two cores, and a failing call is slower than an answered one)
        ctl.start("clf", 3, plan="5,50,100", min_requests=50, stage_seconds=3,
                  guardrails=Guardrails(latency_slack_ms=1000))
        result = ctl.run("clf", interval_s=0.5, max_seconds=90)
        rolled_back_at = time.time()
        assert result.action == "rollback", result.reason
        assert [b.check for b in result.breaches] == ["error_rate"]
        assert result.state.current == 5
        assert [(v.name, v.version, v.weight) for v in RouteTable(project).get("clf").variants] == [
            ("stable", "production", 1.0)]
        time.sleep(RELOAD_S + SLACK_S)  # every replica has re-read the route
        quiet_from = time.time()
        time.sleep(3.0)
    finally:
        load.stop()
        with contextlib.suppress(NotFoundError):
            if ctl.get("clf").active:  # this test failed mid-rollout: the next tests get the stable route back
                ctl.rollback("clf", reason="the fleet test failed mid-rollout")
    rows = [r for r in load.records if r[0] >= started]
    candidate = [r for r in rows if r[0] < rolled_back_at and (r[2] != 200 or r[3] == "3")]
    per_host = Counter(r[4] for r in candidate)
    seen = result.observed["candidate"]
    print(f"candidate requests per host {dict(per_host)}; the controller counted {seen}")
    assert set(per_host) == {"host1", "host2", "host3"}
    # The log the controller decided on holds candidate requests served by every replica (the hosts' own
    # x-served-by answers, matched by request id), and its count is exactly those rows: it read all of them.
    # (Not "more than one replica served": at the decision the replicas' newest flushes may not be in yet.)
    host_of = {r[5]: r[4] for r in load.records}
    decided_on = source.last_log
    assert decided_on is not None
    read = decided_on[decided_on["variant"] == "candidate"]
    assert seen["requests"] == len(read)
    read_hosts = Counter(host_of.get(rid, "?") for rid in read["request_id"])
    assert set(read_hosts) == {"host1", "host2", "host3"}, read_hosts
    assert 0 < seen["errors"] <= sum(1 for r in candidate if r[2] != 200)
    traffic = _AsTraffic(load)
    assert_errors_within_stage(traffic, started, stage_share=0.05, failure_rate=0.10)  # type: ignore[arg-type]
    assert_canary_share_within_stage(traffic, started, rolled_back_at, candidate="3",  # type: ignore[arg-type]
                                     stage_share=0.05)
    after = [r for r in load.records if r[0] >= quiet_from]
    assert len(after) > 20, len(after)
    assert [r for r in after if r[2] != 200 or r[3] != "1"] == []  # only the stable version answers, all of it


class _KeepsLastLog(ServingGuardrails):
    """The serving guardrails, keeping the prediction-log rows of the last window they judged."""

    last_log: pd.DataFrame | None = None

    def _log(self, model: str, since: float) -> Any:
        self.last_log = super()._log(model, since)
        return self.last_log


class _AsTraffic:
    """The rollout tests' bound checks read ``statuses`` (time, status, version) and ``errors(since)``."""

    def __init__(self, load: Load) -> None:
        self.statuses = [(r[0], r[2], r[3]) for r in load.records]

    def errors(self, since: float = 0.0) -> tuple[int, int]:
        rows = [s for s in self.statuses if s[0] >= since]
        return sum(1 for s in rows if s[1] != 200), len(rows)


def test_a_killed_host_leaves_the_pool_and_only_its_requests_in_flight_fail(fleet: Fleet) -> None:
    """(b) SIGKILL one host's server under load from six clients: HAProxy's health checks take it out of the pool;
    the requests that fail are at most those in flight at the kill (a refused connection is retried on another
    host); then the host is restarted and HAProxy brings it back."""
    assert fleet.balancer is not None
    victim = fleet.host("host2")
    load = Load(fleet.url, "clf", clients=6, max_seconds=90, seed=12, ids="b").start()
    try:
        deadline = time.monotonic() + 30
        while len(load.records) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        victim.kill()
        t1 = time.time()  # the process is gone (waited on)
        fleet.balancer.wait_status("host2", "DOWN", timeout=30)
        down_at = time.time()
        n = len(load.records)
        deadline = time.monotonic() + 30
        while len(load.records) < n + 300 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        load.stop()
    in_flight = [r for r in load.records if r[0] <= t1 and r[1] >= t0]
    failed = [r for r in load.records if r[2] != 200]
    print(f"{len(load.records)} requests, {len(failed)} failed, {len(in_flight)} in flight at the kill; "
          f"HAProxy saw host2 down {down_at - t1:.2f} s after it; failed (start, end) - kill: "
          f"{[(round(r[0] - t0, 3), round(r[1] - t0, 3), r[2], r[4]) for r in failed]}")
    assert len(failed) <= len(in_flight)
    assert len(failed) <= load.clients  # one request per client at a time: at most one each died with the host
    assert all(r[0] <= t1 for r in failed)  # none started after the host was gone failed
    after = [r for r in load.records if r[0] > down_at]
    assert len(after) >= 300 and {r[4] for r in after} == {"host1", "host3"} and all(r[2] == 200 for r in after)
    assert fleet.balancer.stats() == {"host1": "UP", "host2": "DOWN", "host3": "UP"}
    victim.start().wait_ready()
    fleet.balancer.wait_status("host2", "UP", timeout=30)


def test_a_member_on_another_schema_version_refuses_to_start_naming_it(fleet: Fleet, project: Project) -> None:
    """Fail early: the shared database is at a schema revision this member's code does not know (a newer
    modelmill migrated it): the new member exits non-zero naming the revision and the setting (MODELMILL_DB),
    and never joins; the running members go on serving."""
    db = project.db
    with db.begin() as conn:
        [head] = [v for v in conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
                  if str(v).startswith("serving_")]
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'serving_9999' WHERE version_num = :v"),
                     {"v": head})
    try:
        newcomer = fleet.add_namespace(9).start()
        assert newcomer.proc is not None
        rc = newcomer.proc.wait(timeout=120)
        log = newcomer.log.read_text()
        assert rc != 0, log
        assert "schema revision serving_9999" in log and "MODELMILL_DB" in log, log
        assert "Traceback" not in log
    finally:
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v WHERE version_num = 'serving_9999'"),
                         {"v": head})
    with httpx.Client(trust_env=False, timeout=10) as c:
        assert {c.post(f"{fleet.url}/v2/models/clf/infer", json=_body(np.zeros(len(COLUMNS)))).status_code
                for _ in range(6)} == {200}
