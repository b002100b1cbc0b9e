"""Label events over a broker (the local log, NATS JetStream, Redis Streams): checked by the labels route's own
check, stored through the one label writer, bad ones dead-lettered with their reason, acked only after the write."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from modelmill.ingest import DeadLetters, Polled, Source
from modelmill.ingest.labels import LABEL_REASONS, LabelConsumer, replay_label_dead_letters
from modelmill.ingest.source import open_publisher
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from modelmill.store import Feedback
from tests.ingest.conftest import Broker
from tests.prediction_log import prediction_log

KINDS = ["local", "nats", "redis"]
TS = "2026-12-01T10:00:00Z"


@pytest.fixture
def models(project: Project) -> Project:
    """``clf`` (a binary classifier, predictions r0..r4 logged) and ``reg`` (a regressor, none logged)."""
    lr = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    registry = Registry(project)
    registry.register("clf", lr, flavor="sklearn", signature=Signature(inputs=[Field("x")]))
    registry.register("reg", lr, flavor="sklearn", signature=Signature(inputs=[Field("x")]), tags={"task": "regression"})
    with prediction_log(project.offline) as log:
        for i in range(5):
            log.append(f"r{i}", "clf", 1, "main", None, ("x",), np.array([[float(i)]]), np.array([i / 10]), 1.0)
    return project


def event(model: str, rid: str, label: Any, **more: Any) -> bytes:
    return orjson.dumps({"model": model, "id": rid, "label": label, **more})


GOOD = [event("clf", "r0", 1, ts=TS), event("clf", "r1", False, ts=TS), event("clf", "r2", 1.0),
        event("reg", "x-9", 3.25, ts=TS)]
BAD = {  # payload -> (reason, field)
    event("clf", "r3", 2, ts=TS): ("invalid_label", "label"),
    event("reg", "x-1", True): ("invalid_label", "label"),
    event("nope", "r3", 1): ("unknown_model", "model"),
    event("clf", "r3", 1, ts="someday"): ("wrong_type", "ts"),
    event("clf", "r3", 1, ts=1e300): ("out_of_range", "ts"),
    event("clf", "", 1): ("wrong_type", "id"),
    event(7, "r3", 1): ("wrong_type", "model"),  # type: ignore[arg-type]
    orjson.dumps({"model": "clf", "id": "r3"}): ("missing_required", "label"),
    orjson.dumps({"id": "r3", "label": 1}): ("missing_required", "model"),
    b'{"model": "clf", "id": "r3", "label": NaN}': ("invalid_json", None),
    b"[1, 2]": ("not_an_object", None),
}


def labelled(project: Project) -> dict[float, float]:
    got = Feedback(project.offline).labelled(model="clf").to_pydict()
    return dict(zip(got["output"], got["label"], strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_label_events_are_stored_and_the_bad_ones_dead_lettered_with_their_reason(
        kind: str, make_broker: Callable[[str], Broker], models: Project) -> None:
    broker = make_broker(kind)
    payloads = [GOOD[0], *BAD, *GOOD[1:]]
    with broker.publisher() as pub:
        pub.publish(payloads)
    stats = LabelConsumer(models, broker.patient_source()).run(once=True, idle_s=1.0)
    assert (stats.polled, stats.accepted, stats.duplicates, stats.unknown, stats.dead_letters) == (
        len(payloads), 3, 0, 1, len(BAD))
    assert labelled(models) == {0.0: 1.0, 0.1: 0.0, 0.2: 1.0}
    letters = DeadLetters(models.db).list(schema="labels", limit=None)
    assert {d.payload: (d.reason, d.field) for d in letters} == BAD
    assert {d.stream for d in letters} == {broker.stream} and {d.reason for d in letters} <= set(LABEL_REASONS)
    assert "must be 0 or 1" in next(d.detail for d in letters if d.payload == event("clf", "r3", 2, ts=TS))
    # acked: the group gets nothing again, and nothing more is stored
    again = LabelConsumer(models, broker.patient_source()).run(once=True, idle_s=1.0)
    assert again.polled == 0 and len(DeadLetters(models.db).list(schema="labels", limit=None)) == len(BAD)
    assert models.offline.read("labels").num_rows == 4


class Crashing(Source):
    """A source that dies at its first ack: the labels are written, the offsets never committed."""

    def __init__(self, inner: Source) -> None:
        self.inner, self.url, self.stream = inner, inner.url, inner.stream

    def open(self) -> Crashing:
        self.inner.open()
        return self

    def close(self) -> None:
        self.inner.close()

    def poll(self, max_events: int, timeout: float) -> Polled:
        return self.inner.poll(max_events, timeout)

    def ack(self, polled: Sequence[Polled]) -> None:
        raise SystemExit("crashed before the ack")


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_redelivered_after_a_crash_before_the_ack_stores_nothing_twice(
        kind: str, make_broker: Callable[[str], Broker], models: Project) -> None:
    broker = make_broker(kind)
    with broker.publisher() as pub:
        pub.publish(GOOD)
    with pytest.raises(SystemExit):
        LabelConsumer(models, Crashing(broker.source())).run(once=True, idle_s=1.0)
    stored = models.offline.read("labels").num_rows
    assert stored == len(GOOD)  # written before the ack that failed
    # the broker hands the batch again (NATS and Redis after their 1 s redelivery timers in these fixtures)
    again = LabelConsumer(models, broker.source()).run(once=True, idle_s=3.0)
    assert again.polled == len(GOOD) and again.accepted == again.unknown == 0, again
    assert again.duplicates == len(GOOD)  # the same id, label and ts (and, without ts, the current label)
    assert models.offline.read("labels").num_rows == stored and labelled(models) == {0.0: 1.0, 0.1: 0.0, 0.2: 1.0}


def test_labels_consume_on_the_projects_broker(models: Project) -> None:
    home = models.settings.home
    (home.parent / "modelmill.toml").write_text(f'home = "{home.name}"\n')
    with open_publisher(models.settings.broker, stream="labels") as pub:
        pub.publish([*GOOD, event("clf", "r3", 7)])
    out = subprocess.run([sys.executable, "-m", "modelmill", "labels", "consume", "--once", "--json"],
                         cwd=home.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert {k: got[k] for k in ("stream", "polled", "accepted", "duplicates", "unknown", "dead_letters")} == {
        "stream": "labels", "polled": 5, "accepted": 3, "duplicates": 0, "unknown": 1, "dead_letters": 1}
    bad = subprocess.run([sys.executable, "-m", "modelmill", "labels", "consume", "--max-seconds", "-1"],
                         cwd=home.parent, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--max-seconds" in bad.stderr and "Traceback" not in bad.stderr


def test_dead_lettered_labels_are_stored_by_a_replay_once_their_model_is_registered(
        make_broker: Callable[[str], Broker], models: Project) -> None:
    broker = make_broker("local")
    late = [event("later", "q1", 1, ts=TS), event("later", "q2", 0, ts=TS)]
    with broker.publisher() as pub:
        pub.publish([*late, event("clf", "r4", 3, ts=TS)])
    stats = LabelConsumer(models, broker.source()).run(once=True, idle_s=0.5)
    assert stats.dead_letters == 3 and DeadLetters(models.db).counts(schema="labels") == {
        "unknown_model": 2, "invalid_label": 1}
    assert replay_label_dead_letters(models).as_dict() == {"accepted": 0, "duplicates": 0, "unknown": 0,
                                                            "still_failing": 3}  # nothing changed yet
    lr = LogisticRegression().fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    Registry(models).register("later", lr, flavor="sklearn", signature=Signature(inputs=[Field("x")]))
    home = models.settings.home
    (home.parent / "modelmill.toml").write_text(f'home = "{home.name}"\n')
    out = subprocess.run([sys.executable, "-m", "modelmill", "labels", "replay-dead-letters", "--json"],
                         cwd=home.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"accepted": 0, "duplicates": 0, "unknown": 2, "still_failing": 1}
    letters = DeadLetters(models.db)
    assert {d.payload for d in letters.list(schema="labels", replayed=True)} == set(late)
    assert [d.reason for d in letters.list(schema="labels")] == ["invalid_label"]
    stored = models.offline.read("labels").to_pydict()
    assert sorted(zip(stored["request_id"], stored["model"], stored["label"], strict=True)) == [
        ("q1", "later", 1.0), ("q2", "later", 0.0)]
    assert replay_label_dead_letters(models).still_failing == 1  # replayed ones are not stored again
    assert models.offline.read("labels").num_rows == 2
