"""Kinesis through boto3 against kinesalite (a Kinesis implementation from the npm registry, installed by
scripts/install-kinesalite.sh and started here on a free port): the source contract every broker keeps, the
group's leases and checkpoints in the metadata database, and a shard split while a consumer reads."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from modelmill.errors import InputError
from modelmill.ingest import Ingestor, Publisher, Source, kinesis, open_publisher, open_source
from modelmill.project import Project
from modelmill.testing import PUBLISHER_CHECKS, SOURCE_CHECKS, check_publisher, check_source
from modelmill.testing.sources import drain
from tests.conftest import need, port_open
from tests.ingest.conftest import CLICKS, clicks

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("KINESALITE_PREFIX", Path.home() / ".cache" / "modelmill" / "kinesalite"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def kinesis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """kinesalite on a free port (in memory, streams ACTIVE at once), stopped after the module."""
    need(importlib.util.find_spec("boto3"), "boto3 is not installed", "pip install 'modelmill[kinesis]'")
    binary = PREFIX / "node_modules" / ".bin" / "kinesalite"
    if not binary.exists() and shutil.which("npm"):
        subprocess.run(["bash", str(ROOT / "scripts" / "install-kinesalite.sh")], timeout=300, check=False,
                       capture_output=True)
    need(binary.exists() and shutil.which("node"), f"kinesalite is not installed at {binary}",
         "run scripts/install-kinesalite.sh")
    port = _free_port()
    log = (tmp_path_factory.mktemp("kinesalite") / "kinesalite.log").open("wb")
    proc = subprocess.Popen([str(binary), "--port", str(port), "--createStreamMs", "0", "--deleteStreamMs", "0",
                             "--updateStreamMs", "0", "--shardLimit", "1000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port, 0.2) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        need(port_open("127.0.0.1", port), f"kinesalite did not start on port {port} (exit {proc.poll()})")
        yield f"kinesis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@dataclasses.dataclass
class KinesisStream:
    """One fresh Kinesis stream; the group's checkpoints live in ``db`` (a metadata database URL)."""

    url: str
    stream: str
    db: str
    shards: int = 1

    def source(self, group: str = "g", consumer: str = "c1", **options: Any) -> Source:
        opts = {"checkpoints": self.db, "lease_seconds": 4.0, "refresh_seconds": 0.3, **options}
        return open_source(self.url, stream=self.stream, group=group, consumer=consumer, **opts)

    def publisher(self, **options: Any) -> Publisher:
        return open_publisher(self.url, stream=self.stream, **{"shards": self.shards, **options})


@pytest.fixture
def make_stream(kinesis_url: str, tmp_path: Path) -> Iterator[Callable[..., KinesisStream]]:
    made: list[KinesisStream] = []

    def make(shards: int = 1) -> KinesisStream:
        s = KinesisStream(kinesis_url, f"mmt-{uuid.uuid4().hex[:10]}", f"sqlite:///{tmp_path / 'meta.db'}", shards)
        made.append(s)
        return s

    yield make
    for s in made:
        kinesis.delete_stream(s.url, s.stream)


# Two shards split a group; the other checks read one shard in publish order.
PARTITIONED = {"shards": 2}


# Every test that talks to kinesalite (a Node server, 2-12 s each here) is slow: .ci/run runs them.
@pytest.mark.slow
@pytest.mark.parametrize("check", list(SOURCE_CHECKS))
def test_source_contract(make_stream: Callable[..., KinesisStream], check: str) -> None:
    check_source(make_stream, partitioned=PARTITIONED, checks=[check])


@pytest.mark.slow
@pytest.mark.parametrize("check", list(PUBLISHER_CHECKS))
def test_publisher_contract(make_stream: Callable[..., KinesisStream], check: str) -> None:
    check_publisher(make_stream, checks=[check])


def _leases(db: str, stream: str) -> list[Any]:
    from modelmill.config import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(db))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(kinesis.leases).where(kinesis.leases.c.stream == stream)
                                     .order_by(kinesis.leases.c.shard)))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_checkpoints_live_in_the_metadata_database(make_stream: Callable[..., KinesisStream],
                                                   project: Project) -> None:
    """The ingestor's acks move the shard checkpoints in the project's own metadata database; a second run
    of the group starts after them and writes nothing twice."""
    s = make_stream(shards=2)
    with s.publisher() as pub:
        pub.publish(clicks(3_000))
    src = open_source(s.url, stream=s.stream, group="etl", consumer="a", checkpoints=project.db)
    stats = Ingestor(project, CLICKS, src, batch_size=1_000, batch_seconds=0.3).run(idle_timeout=2.0)
    assert (stats.polled, stats.written, stats.duplicates) == (3_000, 3_000, 0)
    rows = _leases(project.settings.db, s.stream)
    assert len(rows) == 2 and all(r.checkpoint for r in rows) and all(r.owner is None for r in rows)
    with project.db.engine.connect() as conn:
        assert "kinesis_leases" in sa.inspect(conn).get_table_names()
    with s.publisher() as pub:
        pub.publish(clicks(500, start=3_000))
    again = open_source(s.url, stream=s.stream, group="etl", consumer="b", checkpoints=project.db)
    stats = Ingestor(project, CLICKS, again, batch_size=1_000, batch_seconds=0.3).run(idle_timeout=2.0)
    assert (stats.polled, stats.written, stats.duplicates) == (500, 500, 0)
    ids = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"e{i:07d}" for i in range(3_500)]


@pytest.mark.slow
@pytest.mark.parametrize("metadata", ["sqlite", "postgresql"])
def test_a_dead_consumers_shards_move_after_its_lease(make_stream: Callable[..., KinesisStream], metadata: str,
                                                      request: pytest.FixtureRequest) -> None:
    """A consumer that stops without closing (as after SIGKILL) keeps its shards only until its lease expires;
    then another member of the group reads them from the last checkpoint: the unacked events come back. The
    leases live in the metadata database, SQLite or PostgreSQL."""
    s = make_stream(shards=2)
    if metadata == "postgresql":
        s.db = request.getfixturevalue("pg_url")
    sent = clicks(1_000)
    with s.publisher() as pub:
        pub.publish(sent)
    dead = s.source(consumer="dead", lease_seconds=2.0).open()
    got = drain(dead, 400, size=100, ack=False, timeout=20)
    assert len(got) == 400
    # "dead" never acks nor closes; its leases run out after 2 s
    alive = s.source(consumer="alive", lease_seconds=2.0)
    with alive:
        first = alive.poll(100, 0.5).payloads
        assert first == [], "a live lease of another consumer was taken"
        again = drain(alive, len(sent), timeout=30, unique=True)
    assert set(again) == set(sent)
    assert len(again) == len(sent), "events were delivered twice within one consumer"
    rows = _leases(s.db, s.stream)
    assert {r.owner for r in rows} == {None} and all(r.checkpoint for r in rows)  # "alive" acked and closed
    dead._kinesis = None  # abandoned, as a killed process leaves it
    dead._db.close()


def _key(payload: bytes) -> str:
    return str(orjson.loads(payload)["user"])


def _split(url: str, stream: str) -> None:
    c = kinesis.client(url)
    (shard,) = [sh for sh in kinesis.list_shards(c, url, stream)
                if "EndingSequenceNumber" not in sh["SequenceNumberRange"]]
    lo, hi = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    c.split_shard(StreamName=stream, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((lo + hi) // 2 + 1))
    deadline = time.monotonic() + 30
    while c.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_a_shard_split_while_consuming_loses_and_doubles_nothing(make_stream: Callable[..., KinesisStream]) -> None:
    """SplitShard while a group of two reads: every event arrives once, and each partition key's events
    arrive in publish order across the split (the closed parent is read to its end before its children)."""
    s = make_stream(shards=1)
    n = 6_000
    sent = clicks(n)
    received: dict[str, list[bytes]] = {"a": [], "b": []}
    order: list[bytes] = []  # every delivery, in the order the two consumers (polled in turn) got them
    with s.publisher(key=_key) as pub, s.source(consumer="a") as a, s.source(consumer="b") as b:
        pub.publish(sent[:2_000])
        for name, src in (("a", a), ("b", b)):
            polled = src.poll(300, 0.5)
            received[name].extend(polled.payloads)
            order.extend(polled.payloads)
            src.ack([polled])
        _split(s.url, s.stream)
        pub.publish(sent[2_000:])
        deadline = time.monotonic() + 90
        while sum(map(len, received.values())) < n and time.monotonic() < deadline:
            for name, src in (("a", a), ("b", b)):
                polled = src.poll(200, 0.1)
                received[name].extend(polled.payloads)
                order.extend(polled.payloads)
                src.ack([polled])
    everything = received["a"] + received["b"]
    assert len(everything) == n, f"{len(everything)} events arrived, {n} were published"
    assert set(everything) == set(sent)
    rows = _leases(s.db, s.stream)
    assert len(rows) == 3 and sum(r.finished for r in rows) == 1  # the parent, read to its end and acked
    children = [r for r in rows if r.parents]
    assert len(children) == 2 and all(r.checkpoint for r in children)
    assert received["a"] and received["b"], "the two children of the split did not spread over the group"
    # per partition key: the order of publishing, whoever read it
    last: dict[int, int] = {}
    for p in order:
        e = orjson.loads(p)
        i = int(e["id"][1:])
        assert last.get(e["user"], -1) < i, f"user {e['user']}: event {i} arrived after a later one"
        last[e["user"]] = i


def test_bad_urls_and_options_name_the_field() -> None:
    with pytest.raises(InputError, match="broker"):
        kinesis.parse_url("kinesis://127.0.0.1:4567/mystream")
    with pytest.raises(InputError, match="broker"):
        kinesis.parse_url("kinesis://127.0.0.1:4567?zone=x")
    with pytest.raises(InputError, match="broker"):
        kinesis.parse_url("kinesis://127.0.0.1")
    assert kinesis.parse_url("kinesis://h:1?region=eu-west-1") == kinesis.Endpoint("http://h:1", "eu-west-1")
    assert kinesis.parse_url("kinesis+https://h:443").endpoint == "https://h:443"
    assert kinesis.parse_url("kinesis://?region=eu-west-1").endpoint is None
    with pytest.raises(InputError, match="shards"):
        open_publisher("kinesis://127.0.0.1:4567", stream="s", shards=0)


@pytest.mark.slow
def test_an_oversized_record_is_refused_before_sending(make_stream: Callable[..., KinesisStream]) -> None:
    s = make_stream()
    with s.publisher() as pub, pytest.raises(InputError, match="payload"):
        pub.publish([b"x" * (kinesis.MAX_RECORD_BYTES + 1)])


@pytest.mark.slow
def test_the_cli_ingests_a_kinesis_stream_and_resumes_from_the_projects_checkpoints(
        kinesis_url: str, tmp_path: Path) -> None:
    """`modelmill ingest publish` / `ingest run --source kinesis://...` in a project folder: the group's
    checkpoints default to that project's metadata database, so a second run reads nothing again."""
    import json
    import sys

    stream = f"mmt-{uuid.uuid4().hex[:10]}"
    (tmp_path / "clicks.jsonl").write_bytes(b"\n".join(clicks(300)) + b"\n")
    (tmp_path / "clicks.toml").write_text(
        'name = "clicks"\nevent_id = "id"\nevent_time = "ts"\n\n[fields]\nid = "string"\nts = "timestamp"\n'
        'user = { type = "int", required = true }\nprice = "float"\nkind = "string"\nmobile = "bool"\n')
    cli = [str(Path(sys.executable).parent / "modelmill")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run([*cli, *args, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return dict(json.loads(done.stdout))

    try:
        published = run("ingest", "publish", "clicks.jsonl", "--schema", "clicks.toml", "--broker", kinesis_url,
                        "--stream", stream)
        assert published["published"] == 300
        first = run("ingest", "run", "--schema", "clicks.toml", "--source", kinesis_url, "--stream", stream,
                    "--idle-timeout", "3")
        assert (first["polled"], first["written"]) == (300, 300)
        second = run("ingest", "run", "--schema", "clicks.toml", "--source", kinesis_url, "--stream", stream,
                     "--idle-timeout", "2")
        assert second["polled"] == 0
        bad = subprocess.run([*cli, "ingest", "run", "--schema", "clicks.toml", "--source", f"{kinesis_url}/{stream}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "broker" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        kinesis.delete_stream(kinesis_url, stream)
