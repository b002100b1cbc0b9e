"""Webhooks: every registry and loop event reaches a real receiver that checks its signature; a receiver that
is down is retried with backoff, and nothing is lost across a restart of the deliverer (SQLite, PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.rollout.test_controller import Clock, MemoryRoutes, MemorySource
from tests.serving.conftest import signature, train_lr

from modelmill.config import Settings
from modelmill.errors import ConfigError, InputError
from modelmill.events import (
    KINDS,
    Deliverer,
    emit,
    list_deliveries,
    load_webhooks,
    prune,
    retry_failed,
    sign,
    verify,
)
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.monitoring import AlertEvaluator, Rule
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import RolloutController
from modelmill.store.tables.events import webhook_deliveries

SECRET = "test-secret-1234"


class Receiver:
    """A real HTTP server on 127.0.0.1 that verifies every request's signature with ``secret``.

    ``mode`` is ``ok`` (200 when the signature holds, 401 otherwise) or ``error`` (500 to everything).
    ``stop()`` closes the port (connections are refused); ``start()`` opens it again on the same port.
    """

    def __init__(self, secret: str = SECRET, port: int = 0) -> None:
        self.secret = secret
        self.mode = "ok"
        self.seen: list[dict[str, Any]] = []  # every request: headers, body, verified
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(s["body"]) for s in self.seen if s["verified"] and s["answer"] == 200]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = verify(receiver.secret, self.headers.get("X-Modelmill-Timestamp"), body,
                            self.headers.get("X-Modelmill-Signature"), tolerance_s=10**12)
                answer = 500 if receiver.mode == "error" else 200 if ok else 401
                receiver.seen.append({"headers": dict(self.headers), "body": body, "verified": ok, "answer": answer})
                self.send_response(answer)
                self.end_headers()
                self.wfile.write(b"receiver says no" if answer != 200 else b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("pg_url"))


def _project(tmp_path: Path, db_url: str, hooks: Sequence[dict[str, Any]]) -> Project:
    settings = Settings.defaults(home=tmp_path / ".modelmill").replace(db=db_url)
    return Project(dataclasses.replace(settings, extra={"webhooks": list(hooks)}))


def _hook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"name": "ops", "url": receiver.url, "secret": SECRET, **extra}


class FixedMeasure:
    """An alert signal set by the test: one series, labelled by model."""

    def __init__(self) -> None:
        self.value = 100.0

    def measure(self, rule: Rule, now: float) -> dict[tuple[tuple[str, str], ...], float]:
        return {(("model", "m"),): self.value}

    def baseline(self, rule: Rule, labels: tuple[tuple[str, str], ...]) -> float | None:
        return None


def _every_event(project: Project) -> None:
    """Each kind of event, made by the code that makes it in production."""
    registry = Registry(project)
    v1 = registry.register("m", train_lr(0), flavor="sklearn", signature=signature(), actor="alice")
    registry.register("m", train_lr(1), flavor="sklearn", signature=signature())
    registry.set_alias("m", "production", 1, reason="first")
    registry.set_alias("m", "staging", 2)
    registry.delete_alias("m", "staging", reason="tidy")
    registry.record_gate(v1, {"accepted": True, "decision": "accept", "reason": "auc 0.9 >= 0.8"})
    clock, source = Clock(), MemorySource()
    ctl = RolloutController(project, routes=MemoryRoutes(), source=source, clock=clock)
    ctl.start("m", 2, baseline=1, plan="50,100", min_requests=100, stage_seconds=10)
    ctl.promote("m")
    ctl.promote("m")  # the last stage: completed, production moves to 2 (rollout.complete, alias.set, rollout.alias)
    ctl.start("m", 1, baseline=2, plan="50,100", min_requests=100, stage_seconds=10)
    ctl.rollback("m", reason="on-call said so")
    measure = FixedMeasure()
    ev = AlertEvaluator(project, [Rule.from_mapping({"name": "Slow", "kind": "latency_p95", "threshold": 50})],
                        measure=measure)
    ev.evaluate(1000.0)
    measure.value = 1.0
    ev.evaluate(1100.0)
    store = Experiments(project)
    store.create(Experiment(name="ab", primary_metric="label", variants=(Arm("control", 50, 1), Arm("t", 50, 2))))
    store.stop("ab", winner="t")


def test_every_kind_reaches_a_receiver_that_verifies_its_signature(tmp_path: Path, db_url: str,
                                                                   receiver: Receiver) -> None:
    other = Receiver(secret="another-secret-5678")
    try:
        project = _project(tmp_path, db_url, [_hook(receiver),
                                              {"name": "alerts-only", "url": other.url, "secret": other.secret,
                                               "events": ["alert.*"]}])
        with project:
            _every_event(project)
            pending = list_deliveries(project, limit=1000)
            assert pending["counts"]["pending"] == len(pending["deliveries"]) > 0
            attempts = Deliverer(project).deliver_once()
            assert attempts and all(a.status == "delivered" for a in attempts)
            assert Deliverer(project).deliver_once() == []  # nothing is sent twice
            after = list_deliveries(project, limit=1000)
        assert after["counts"] == {"pending": 0, "delivering": 0, "delivered": len(attempts), "failed": 0}
        assert all(s["verified"] for s in receiver.seen + other.seen)
        kinds = [e["kind"] for e in sorted(receiver.accepted, key=lambda e: e["at"])]
        assert set(kinds) == set(KINDS)
        assert kinds[:6] == ["model.register", "model.register", "alias.set", "alias.set", "alias.delete",
                             "model.gate"]
        assert [e["kind"] for e in other.accepted] == ["alert.firing", "alert.resolved"]
        by_kind = {e["kind"]: e for e in receiver.accepted}
        first = next(e for e in receiver.accepted if e["kind"] == "model.register" and e["data"]["version"] == 1)
        assert first["actor"] == "alice" and first["subject"] == "model:m" and first["data"]["model"] == "m"
        assert len(first["data"]["sha256"]) == 64
        assert by_kind["alias.delete"]["data"] == {"model": "m", "alias": "staging", "previous": 2, "reason": "tidy"}
        assert by_kind["model.gate"]["data"]["accepted"] is True
        assert by_kind["rollout.rollback"]["data"]["reason"] == "on-call said so"
        assert by_kind["rollout.rollback"]["data"]["to"] == "baseline"
        assert by_kind["alert.firing"]["data"]["rule"] == "Slow" and by_kind["alert.firing"]["data"]["value"] == 100
        assert by_kind["experiment.stop"]["data"]["winner"] == "t"
        # The headers name the event and attempt; the event id is the same at every webhook.
        h = receiver.seen[0]["headers"]
        assert h["X-Modelmill-Attempt"] == "1" and h["X-Modelmill-Event"] in KINDS
        assert h["X-Modelmill-Signature"].startswith("sha256=") and h["Content-Type"] == "application/json"
        firing_ids = {e["id"] for e in (receiver.accepted + other.accepted) if e["kind"] == "alert.firing"}
        assert len(firing_ids) == 1
    finally:
        other.stop()


def test_the_event_is_committed_with_the_change_or_not_at_all(tmp_path: Path, receiver: Receiver) -> None:
    with _project(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", [_hook(receiver)]) as project:
        with pytest.raises(RuntimeError), project.db.begin() as conn:
            emit(project, "alias.set", {"model": "m"}, conn=conn)
            raise RuntimeError("the change failed")
        assert list_deliveries(project)["deliveries"] == []
        with pytest.raises(InputError):
            emit(project, "model.deleted", {})
        assert emit(project, "alias.set", {"v": float("nan")}) is not None  # a NaN becomes null: still JSON
        assert list_deliveries(project)["deliveries"][0]["data"] == {"v": None}


def _clock() -> Clock:
    """A clock the test moves by hand, an hour past the real now: after emit() stamped its rows, however slow
    the machine is."""
    clock = Clock()
    clock.now = time.time() + 3600
    return clock


def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_up(tmp_path: Path, db_url: str) -> None:
    receiver = Receiver()
    receiver.stop()  # down: the port refuses connections
    hook = _hook(receiver, backoff_s=10, max_backoff_s=100, max_attempts=8)
    clock = _clock()
    project = _project(tmp_path, db_url, [hook])
    try:
        with project:
            registry = Registry(project)
            registry.register("m", train_lr(0), flavor="sklearn", signature=signature())
            registry.set_alias("m", "production", 1)
            first = Deliverer(project, clock=clock, rand=lambda: 1.0)
            assert [a.status for a in first.deliver_once()] == ["pending", "pending"]
            rows = list_deliveries(project)["deliveries"]
            assert all(r["attempts"] == 1 and "Connect" in r["last_error"] for r in rows)
            assert {r["next_at"] for r in rows} == {clock.now + 10}
            assert first.deliver_once() == []  # not due yet: the backoff holds
            receiver.start()
            receiver.mode = "error"  # up, but answering 500
            clock.now += 10
            assert [a.http_status for a in first.deliver_once()] == [500, 500]
            rows = list_deliveries(project)["deliveries"]
            assert {r["next_at"] for r in rows} == {clock.now + 20}  # doubled
            assert all(r["last_status"] == 500 and r["last_error"] == "HTTP 500: receiver says no" for r in rows)
            del first  # the deliverer's process ends; the outbox is in the database
        receiver.mode = "ok"
        clock.now += 20
        again = _project(tmp_path, db_url, [hook])
        with again:
            attempts = Deliverer(again, clock=clock, rand=lambda: 0.0).deliver_once()
            assert [(a.status, a.attempt) for a in attempts] == [("delivered", 3), ("delivered", 3)]
            assert list_deliveries(again)["counts"]["delivered"] == 2
        assert [e["kind"] for e in receiver.accepted] == ["model.register", "alias.set"]
        assert [s["answer"] for s in receiver.seen] == [500, 500, 200, 200]
    finally:
        receiver.stop()


def test_jitter_spreads_retries_between_half_and_the_whole_backoff() -> None:
    settings = dataclasses.replace(Settings.defaults(home="/tmp/x"), extra={"webhooks": [
        {"url": "http://127.0.0.1:1/h", "secret": SECRET, "backoff_s": 4, "max_backoff_s": 50}]})
    (hook,) = load_webhooks(settings)
    assert [hook.delay(n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [4, 8, 16, 32, 50]
    assert [hook.delay(n, lambda: 0.0) for n in (1, 2, 5)] == [2, 4, 25]


def test_after_max_attempts_the_delivery_fails_with_its_error_shown(tmp_path: Path, db_url: str,
                                                                    receiver: Receiver) -> None:
    receiver.mode = "error"
    clock = _clock()
    with _project(tmp_path, db_url, [_hook(receiver, max_attempts=3, backoff_s=1, max_backoff_s=1)]) as project:
        emit(project, "alias.set", {"model": "m", "alias": "production", "version": 1})
        deliverer = Deliverer(project, clock=clock)
        statuses = []
        for _ in range(5):
            statuses += [a.status for a in deliverer.deliver_once()]
            clock.now += 2
        assert statuses == ["pending", "pending", "failed"]
        out = list_deliveries(project, status="failed")
        assert out["counts"]["failed"] == 1
        row = out["deliveries"][0]
        assert row["attempts"] == 3 and row["last_status"] == 500 and row["last_error"] == "HTTP 500: receiver says no"
        assert retry_failed(project) == 1
        receiver.mode = "ok"
        assert [a.status for a in deliverer.deliver_once()] == ["delivered"]
        emit(project, "alias.set", {"model": "m", "alias": "staging", "version": 2})
        receiver.mode = "error"
        deliverer.deliver_once()  # this one stays pending: prune keeps everything not delivered
        assert prune(project, older_than_s=60, now=clock.now + 30) == 0  # delivered too recently
        assert prune(project, older_than_s=60, now=clock.now + 120) == 1
        assert list_deliveries(project)["counts"] == {"pending": 1, "delivering": 0, "delivered": 0, "failed": 0}


def test_a_bad_signature_is_refused_by_verify() -> None:
    body = b'{"id": "abc", "kind": "alias.set"}'
    good = sign(SECRET, body, timestamp=1_700_000_000)
    ts, sig = good["X-Modelmill-Timestamp"], good["X-Modelmill-Signature"]
    assert verify(SECRET, ts, body, sig, now=1_700_000_100)
    assert not verify("wrong-secret-000", ts, body, sig, now=1_700_000_100)
    assert not verify(SECRET, ts, body + b" ", sig, now=1_700_000_100)  # one byte more
    assert not verify(SECRET, str(int(ts) + 1), body, sig, now=1_700_000_100)  # another timestamp
    assert not verify(SECRET, ts, body, sig, now=1_700_000_000 + 301)  # too old: a replay
    assert not verify(SECRET, ts, body, sig.replace("sha256=", "sha1="), now=1_700_000_100)
    for bad_ts in (None, "", "soon"):
        assert not verify(SECRET, bad_ts, body, sig, now=1_700_000_100)
    assert not verify(SECRET, ts, body, None, now=1_700_000_100)
    assert not verify("", ts, body, sig, now=1_700_000_100)


def test_a_receiver_that_checks_signatures_refuses_a_forged_request(receiver: Receiver) -> None:
    import httpx

    body = b'{"id": "forged"}'
    headers = sign("not-the-secret", body)
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 401
    assert httpx.post(receiver.url, content=body, headers=sign(SECRET, body)).status_code == 200


def test_two_deliverers_never_send_one_attempt_twice(tmp_path: Path, db_url: str, receiver: Receiver) -> None:
    with _project(tmp_path, db_url, [_hook(receiver)]) as project:
        for i in range(30):
            emit(project, "alias.set", {"i": i})
        deliverers = [Deliverer(project) for _ in range(3)]
        threads = [threading.Thread(target=d.deliver_once) for d in deliverers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert list_deliveries(project)["counts"]["delivered"] == 30
    assert sorted(json.loads(s["body"])["data"]["i"] for s in receiver.seen) == list(range(30))


def test_an_expired_claim_is_taken_again(tmp_path: Path, receiver: Receiver) -> None:
    """A deliverer that died mid-POST leaves a row 'delivering'; once its lease runs out another sends it."""
    clock = _clock()
    with _project(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", [_hook(receiver)]) as project:
        emit(project, "alias.set", {"model": "m"})
        with project.db.begin() as conn:
            conn.execute(webhook_deliveries.update().values(status="delivering", attempts=1, claimed_by="dead",
                                                            lease_until=clock.now + 60))
        assert Deliverer(project, clock=clock).deliver_once() == []
        clock.now += 61
        assert [(a.status, a.attempt) for a in Deliverer(project, clock=clock).deliver_once()] == [("delivered", 2)]


@pytest.mark.parametrize(("hook", "key"), [
    ({"url": "ftp://x"}, "webhooks[0].url"),
    ({"url": "http://127.0.0.1/h"}, "webhooks[0].secret"),
    ({"url": "http://127.0.0.1/h", "secret": "short"}, "webhooks[0].secret"),
    ({"url": "http://127.0.0.1/h", "secret_env": "MM_TEST_UNSET_SECRET"}, "webhooks[0].secret_env"),
    ({"url": "http://127.0.0.1/h", "secret": SECRET, "events": ["model.deleted"]}, "webhooks[0].events"),
    ({"url": "http://127.0.0.1/h", "secret": SECRET, "events": "alias.set"}, "webhooks[0].events"),
    ({"url": "http://127.0.0.1/h", "secret": SECRET, "max_attempts": 0}, "webhooks[0].max_attempts"),
    ({"url": "http://127.0.0.1/h", "secret": SECRET, "backoff_s": "1m"}, "webhooks[0].backoff_s"),
    ({"url": "http://127.0.0.1/h", "secret": SECRET, "retries": 3}, "webhooks[0].retries"),
])
def test_a_bad_webhook_table_is_a_config_error_naming_its_key(hook: dict[str, Any], key: str) -> None:
    settings = dataclasses.replace(Settings.defaults(home="/tmp/x"), extra={"webhooks": [hook]})
    with pytest.raises(ConfigError) as err:
        load_webhooks(settings, env={})
    assert err.value.key == key
    assert "short" not in err.value.message  # a secret is never echoed


def test_secret_env_and_event_patterns() -> None:
    settings = dataclasses.replace(Settings.defaults(home="/tmp/x"), extra={"webhooks": [
        {"url": "http://127.0.0.1/h", "secret_env": "HOOK_SECRET", "events": ["rollout.*", "model.gate"]}]})
    (hook,) = load_webhooks(settings, env={"HOOK_SECRET": "from-the-environment"})
    assert hook.secret == "from-the-environment" and hook.name == "http://127.0.0.1/h"
    assert [k for k in KINDS if hook.wants(k)] == ["model.gate", "rollout.start", "rollout.advance",
                                                  "rollout.complete", "rollout.rollback", "rollout.alias"]
    assert "from-the-environment" not in repr(hook)
    assert load_webhooks(Settings.defaults(home="/tmp/x")) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mm(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **env}, timeout=120)


@pytest.mark.slow  # CLI processes, ~15 s: .ci/run runs it
def test_cli_lists_and_delivers_across_processes(tmp_path: Path) -> None:
    """Events stored by one process are delivered by another (`modelmill webhooks deliver`); the listing shows
    each one's status and, for a failure, its error."""
    port = _free_port()  # nothing listens yet
    (tmp_path / "modelmill.toml").write_text(
        f'[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:{port}/hook"\nsecret_env = "OPS_SECRET"\n'
        'max_attempts = 1\n')
    env = {"OPS_SECRET": SECRET}
    from modelmill.config import load_settings

    os.environ["OPS_SECRET"] = SECRET
    try:
        with Project(load_settings(cwd=tmp_path)) as project:
            emit(project, "alias.set", {"model": "m", "alias": "production", "version": 1}, subject="model:m")
            emit(project, "model.gate", {"model": "m", "version": 1, "accepted": False})
    finally:
        del os.environ["OPS_SECRET"]
    listed = _mm(["webhooks", "list", "--json"], tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["counts"]["pending"] == 2
    down = _mm(["webhooks", "deliver", "--once", "--json"], tmp_path, **env)
    assert down.returncode == 1, down.stderr  # a failed delivery is a non-zero exit
    assert [a["status"] for a in json.loads(down.stdout)["attempts"]] == ["failed", "failed"]
    failed = _mm(["webhooks", "list", "--status", "failed"], tmp_path, **env)
    assert failed.returncode == 0 and "Connect" in failed.stdout and "alias.set" in failed.stdout
    assert _mm(["webhooks", "retry", "--json"], tmp_path, **env).returncode == 0
    receiver = Receiver(port=port)
    try:
        up = _mm(["webhooks", "deliver", "--once", "--json"], tmp_path, **env)
        assert up.returncode == 0, up.stderr
        assert [a["status"] for a in json.loads(up.stdout)["attempts"]] == ["delivered", "delivered"]
    finally:
        receiver.stop()
    assert sorted(e["kind"] for e in receiver.accepted) == ["alias.set", "model.gate"]
    bad = _mm(["webhooks", "list", "--status", "lost"], tmp_path, **env)
    assert bad.returncode == 2 and "status" in bad.stderr and "Traceback" not in bad.stderr
    kept = _mm(["webhooks", "prune", "--older-than", "7d", "--json"], tmp_path, **env)
    assert kept.returncode == 0 and json.loads(kept.stdout) == {"deleted": 0}, kept.stderr  # delivered just now
    odd = _mm(["webhooks", "prune", "--older-than", "soon"], tmp_path, **env)
    assert odd.returncode == 2 and "--older-than" in odd.stderr and "Traceback" not in odd.stderr
    unset = _mm(["webhooks", "deliver", "--once"], tmp_path)
    assert unset.returncode != 0 and "webhooks[0].secret_env" in unset.stderr and "Traceback" not in unset.stderr


def test_outbox_rows_carry_the_body_that_is_signed(tmp_path: Path, receiver: Receiver) -> None:
    with _project(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", [_hook(receiver)]) as project:
        emit(project, "experiment.stop", {"experiment": "ab", "winner": "t"}, subject="ab", actor="bob")
        Deliverer(project).deliver_once()
        with project.db.engine.connect() as conn:
            stored = conn.execute(sa.select(webhook_deliveries.c.body)).scalar_one()
    assert receiver.seen[0]["body"] == stored.encode()


def test_http_lists_deliveries_with_their_status_and_error(tmp_path: Path) -> None:
    """GET /v1/webhooks/deliveries: a token is needed (401), any role reads (200), a bad query is a 400."""
    from starlette.testclient import TestClient
    from tests.serving.conftest import make_project, open_project_at

    from modelmill.security import Authenticator, TokenStore
    from modelmill.serving import ServerConfig, build_server, create_app

    hooks = (f'\n[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:{_free_port()}/hook"\n'
             f'secret = "{SECRET}"\nmax_attempts = 1\n')
    root = make_project(tmp_path / "proj", serving=hooks)  # registers clf v1, v2 and sets production: 3 events
    project = open_project_at(root)
    try:
        assert [a.status for a in Deliverer(project).deliver_once()] == ["failed"] * 3  # nobody listens
        store = TokenStore(project)
        secrets = {role: store.create(role, name=f"{role}-job")[1] for role in ("read", "predict", "admin")}
        config = ServerConfig.from_section(project.settings.section("serving"), models=["clf@production"])
        app = create_app(build_server(project, config), auth=Authenticator(store, mode="control"))
        with TestClient(app) as client:
            path = "/v1/webhooks/deliveries"
            assert client.get(path).status_code == 401
            bad = client.get(path, headers={"Authorization": "Bearer mmt_000000000000_x"})
            assert bad.status_code == 401
            for role in ("read", "predict", "admin"):
                r = client.get(path, headers={"Authorization": f"Bearer {secrets[role]}"})
                assert r.status_code == 200, r.text
            out = r.json()
            assert out["counts"] == {"pending": 0, "delivering": 0, "delivered": 0, "failed": 3}
            assert [d["kind"] for d in out["deliveries"]] == ["alias.set", "model.register", "model.register"]
            assert all(d["attempts"] == 1 and "Connect" in d["last_error"] for d in out["deliveries"])
            auth = {"Authorization": f"Bearer {secrets['read']}"}
            one = client.get(f"{path}?kind=alias.set&status=failed&limit=1", headers=auth).json()["deliveries"]
            assert [(d["kind"], d["data"]["version"]) for d in one] == [("alias.set", 1)]
            assert client.get(f"{path}?status=delivered", headers=auth).json()["deliveries"] == []
            for query, field in (("status=lost", "status"), ("kind=model.deleted", "kind"), ("limit=0", "limit"),
                                 ("limit=x", "limit"), ("since=1", "since")):
                r = client.get(f"{path}?{query}", headers=auth)
                assert r.status_code == 400 and r.json()["error"].startswith(f"{field}:"), (query, r.text)
    finally:
        project.close()


def test_a_loop_round_delivers_the_events_it_made(tmp_path: Path, receiver: Receiver) -> None:
    """`modelmill loop`: a firing rule retrains, the version is gated and its rollout starts; the round's last
    phase POSTs each of those events."""
    from tests.loop import pipelines
    from tests.loop.helpers import config, log_traffic

    from modelmill.loop import Lease, Loop

    with _project(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", [_hook(receiver)]) as project:
        pipelines.first_version(project)
        log_traffic(project, ok=20, failed=20)
        out = Loop(project, config(), lease=Lease(project.db, holder="a")).round()
        assert out["models"]["clicks"]["decisions"][0]["status"] == "rolling_out"
        assert out["webhooks"]["delivered"] == len(receiver.accepted) and out["webhooks"]["failed"] == 0
        assert list_deliveries(project)["counts"]["pending"] == 0
    kinds = [e["kind"] for e in receiver.accepted]
    for kind in ("model.register", "alias.set", "alert.firing", "model.gate", "rollout.start"):
        assert kind in kinds, kinds
    assert kinds.index("alert.firing") < kinds.index("model.gate") < kinds.index("rollout.start")
