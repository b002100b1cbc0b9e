"""Bad input end to end, dead-letter replay, processors, file replay, and the CLI."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import Settings
from modelmill.errors import ConfigError
from modelmill.ingest import (
    DeadLetters,
    EventSchema,
    Field,
    FileReplaySource,
    Ingestor,
    StreamProcessor,
    replay_dead_letters,
)
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, Broker, click


def dirty_stream(n: int, seed: int = 3) -> tuple[list[bytes], set[str], dict[str, list[bytes]]]:
    """``n`` events of which 1% of each malformed kind; returns payloads, valid ids, malformed by reason."""
    rng = random.Random(seed)
    kinds = ["wrong_type", "missing_required", "invalid_json", "oversized"]
    bad_at = dict(zip(rng.sample(range(n), 4 * n // 100), kinds * (n // 100), strict=True))
    payloads, valid, malformed = [], set(), {k: [] for k in kinds}
    for i in range(n):
        row = click(i)
        kind = bad_at.get(i)
        if kind == "wrong_type":
            row["user"] = f"user-{i}"
        elif kind == "missing_required":
            del row["user"]
        elif kind == "oversized":
            row["kind"] = "x" * 4_000
        p = orjson.dumps(row)
        if kind == "invalid_json":
            p = p[: len(p) // 2]
        payloads.append(p)
        if kind is None:
            valid.add(row["id"])
        else:
            malformed[kind].append(p)
    return payloads, valid, malformed


@pytest.mark.parametrize("kind", ["local", "nats"])
def test_bad_input_lands_in_dead_letters_and_counts_add_up(
        kind: str, make_broker: Callable[[str], Broker], project: Project) -> None:
    n = 20_000
    payloads, valid, malformed = dirty_stream(n)
    broker = make_broker(kind)
    with broker.publisher() as pub:
        pub.publish(payloads)
    stats = Ingestor(project, CLICKS, broker.patient_source(), batch_size=5_000).run(max_events=n, idle_timeout=10)
    assert stats.polled == n
    stored = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert len(stored) == len(valid) == n - 800 and set(stored) == valid  # every valid event, once
    letters = DeadLetters(project.db).list(limit=None)
    assert len(letters) == stats.dead_letters == 800
    by_reason: dict[str, list[bytes]] = {}
    for d in letters:
        by_reason.setdefault(d.reason, []).append(d.payload)
        assert d.detail and d.stream == broker.stream and d.schema == "clicks"
    assert {k: sorted(v) for k, v in by_reason.items()} == {k: sorted(v) for k, v in malformed.items()}
    assert len(stored) + len(letters) == n


def test_replaying_dead_letters_after_a_schema_fix(project: Project) -> None:
    payloads, valid, malformed = dirty_stream(2_000)
    Ingestor(project, CLICKS, FileReplaySource(_lines(project, payloads), schema=CLICKS)).run()
    assert DeadLetters(project.db).counts() == {k: 20 for k in malformed}
    # The fix: "user" becomes optional, so events without it are fine now.
    fixed = EventSchema(name="clicks", fields=[f if f.name != "user" else Field("user", "int")
                                               for f in CLICKS.fields],
                        event_id="id", event_time="ts", max_event_bytes=CLICKS.max_event_bytes)
    result = replay_dead_letters(project, fixed)
    assert (result.accepted, result.duplicates, result.still_failing) == (20, 0, 60)
    assert DeadLetters(project.db).counts() == {"wrong_type": 20, "invalid_json": 20, "oversized": 20}
    assert len(DeadLetters(project.db).list(replayed=True, limit=None)) == 20
    assert project.offline.read("clicks").num_rows == len(valid) + 20
    again = replay_dead_letters(project, fixed)  # nothing new passes; nothing is written twice
    assert (again.accepted, again.still_failing) == (0, 60)


def _lines(project: Project, payloads: list[bytes]) -> Path:
    path = Path(project.settings.home) / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(payloads) + b"\n")
    return path


def test_processors_get_each_accepted_batch(project: Project) -> None:
    batches: list[pa.Table] = []

    class Keep:
        def process(self, stream: str, batch: pa.Table) -> None:
            batches.append(batch)

    assert isinstance(Keep(), StreamProcessor)
    rows = [orjson.dumps(click(i)) for i in range(1_000)]
    path = _lines(project, rows + rows[:100])
    Ingestor(project, CLICKS, FileReplaySource(path, schema=CLICKS), processors=[Keep()], batch_size=300).run()
    assert sum(b.num_rows for b in batches) == 1_000  # the repeats were not handed on
    assert all(b.schema == CLICKS.arrow_schema for b in batches)


def test_file_replay_orders_by_event_time_and_compresses_time(tmp_path: Path) -> None:
    rows = [click(i) for i in range(50)]
    random.Random(1).shuffle(rows)
    path = tmp_path / "c.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    src = FileReplaySource(path, schema=CLICKS).open()
    ids = [orjson.loads(p)["id"] for p in src.poll(100, 0).payloads]
    assert ids == sorted(ids) and src.exhausted
    # 49 events 37 s apart = 1,813 s of event time; at speed 18,130 that is 0.1 s of wall time.
    fast = FileReplaySource(path, schema=CLICKS, speed=18_130).open()
    started = time.monotonic()
    got = 0
    while not fast.exhausted:
        got += len(fast.poll(100, 0.05))
    assert got == 50 and 0.08 <= time.monotonic() - started < 2.0


def test_cli_publish_run_dead_letters_and_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"MODELMILL_HOME": str(tmp_path / ".mm")}
    runner = CliRunner()
    schema = tmp_path / "clicks.json"
    schema.write_text(json.dumps(CLICKS.as_dict()))
    payloads, _valid, _ = dirty_stream(1_000)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(payloads) + b"\n")

    def run(*args: str) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    published = run("ingest", "publish", str(events), "--schema", str(schema))
    assert published["published"] == 1_000 and published["broker"].startswith("local://")
    ran = run("ingest", "run", "--schema", str(schema), "--idle-timeout", "0.5")
    assert (ran["polled"], ran["written"], ran["dead_letters"]) == (1_000, 960, 40)
    letters = run("ingest", "dead-letters", "--schema", "clicks", "--limit", "5")
    assert letters["pending"] == 40 and len(letters["dead_letters"]) == 5
    assert Counter(letters["by_reason"]) == Counter({"wrong_type": 10, "missing_required": 10,
                                                     "invalid_json": 10, "oversized": 10})
    replayed = run("ingest", "replay-dead-letters", "--schema", str(schema))
    assert replayed == {"schema": "clicks", "accepted": 0, "duplicates": 0, "still_failing": 40}
    direct = run("ingest", "run", "--schema", str(schema), "--source", str(events))  # file replay, no broker
    assert (direct["written"], direct["duplicates"]) == (0, 960)
    shown = run("ingest", "schema", "flights")
    assert shown["event_id"] == "event_id"
    missing = runner.invoke(app, ["ingest", "run", "--schema", "nope", "--json"], env=env)
    assert missing.exit_code != 0


def test_an_event_past_the_time_window_is_dead_lettered_and_the_rest_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 item 11: ``"ts": 1e12`` (year 33658) passed validation, then the sink's OverflowError made
    `ingest run` exit 1 on every restart, and the events around it were never stored."""
    monkeypatch.chdir(tmp_path)
    env = {"MODELMILL_HOME": str(tmp_path / ".mm")}
    runner = CliRunner()
    schema = tmp_path / "clicks.json"
    schema.write_text(json.dumps(CLICKS.as_dict()))
    rows = [click(i) for i in range(10)]
    rows[4]["ts"] = 1e12
    rows[7]["ts"] = "0001-01-01T00:00:00Z"  # representable, but no nanosecond timestamp holds it
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")

    def run(*args: str, code: int = 0) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(app, [*args, "--json"], env=env)
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if code == 0 else {}

    run("ingest", "publish", str(events), "--schema", str(schema))
    ran = run("ingest", "run", "--schema", str(schema), "--idle-timeout", "0.5")
    assert (ran["polled"], ran["written"], ran["dead_letters"]) == (10, 8, 2)
    letters = run("ingest", "dead-letters", "--schema", "clicks")
    assert letters["by_reason"] == {"out_of_range": 2}
    assert sorted(d["field"] for d in letters["dead_letters"]) == ["ts", "ts"]
    assert any("2262-04-11" in d["detail"] and "[ingest]" in d["detail"] for d in letters["dead_letters"])
    # The window is a setting: a narrower one refuses the 2024 events too, a malformed one is a clear error.
    (tmp_path / "modelmill.toml").write_text('[ingest]\nmin_time = 2025-01-01\n')
    again = run("ingest", "run", "--schema", str(schema), "--source", str(events))
    assert (again["written"], again["dead_letters"]) == (0, 10)
    (tmp_path / "modelmill.toml").write_text('[ingest]\nmax_time = "soon"\n')
    bad = runner.invoke(app, ["ingest", "run", "--schema", str(schema), "--source", str(events)], env=env)
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)  # main() prints it, exit 1
    assert "ingest.max_time" in str(bad.exception) and "ISO 8601" in str(bad.exception)


def test_csv_with_fractional_seconds_and_empty_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 item 14: `ingest publish x.csv` crashed on fractional-second times (a nanosecond Timestamp
    orjson cannot write), and an empty cell passed ``required = true`` (an entity "" reached the store)."""
    monkeypatch.chdir(tmp_path)
    env = {"MODELMILL_HOME": str(tmp_path / ".mm")}
    runner = CliRunner()
    schema = tmp_path / "clicks.json"
    schema.write_text(json.dumps(CLICKS.as_dict()))
    csv = tmp_path / "x.csv"
    csv.write_text("id,ts,user,price,kind\n"
                   "007,2024-01-01T00:00:00.5Z,1,1.5,view\n"
                   "e2,2024-01-01T00:00:01.123456Z,2,,\n"
                   ",2024-01-01T00:00:02Z,3,2.0,buy\n"
                   "e4,2024-01-01T00:00:03Z,,2.5,buy\n")

    def run(*args: str) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert run("ingest", "publish", str(csv), "--schema", str(schema))["published"] == 4
    ran = run("ingest", "run", "--schema", str(schema), "--idle-timeout", "0.5")
    assert (ran["written"], ran["dead_letters"]) == (2, 2)
    letters = run("ingest", "dead-letters", "--schema", "clicks")["dead_letters"]
    assert sorted((d["reason"], d["field"]) for d in letters) == [("missing_required", "id"),
                                                                 ("missing_required", "user")]
    assert {d["detail"] for d in letters} == {"required field 'id' is empty",
                                              "required field 'user' is missing or null"}
    with Project(Settings.defaults(home=tmp_path / ".mm")) as project:
        stored = sorted(project.offline.read("clicks", columns=["id", "ts", "kind"]).to_pylist(),
                        key=lambda r: r["id"])
    assert [r["id"] for r in stored] == ["007", "e2"]  # a string field stays text
    assert [r["ts"].isoformat() for r in stored] == ["2024-01-01T00:00:00.500000+00:00",
                                                    "2024-01-01T00:00:01.123456+00:00"]
    assert [r["kind"] for r in stored] == ["view", ""]  # an empty optional string is kept as written
