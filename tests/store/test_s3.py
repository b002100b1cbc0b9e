"""The offline store, the prediction log with its labels, and the artifacts on S3 (moto's server on loopback,
s3fs as the client, DuckDB reading through the registered fsspec filesystem): the same answers as on disk."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import port_open
from tests.prediction_log import prediction_log
from tests.s3 import MotoServer

from modelmill.config import Settings
from modelmill.errors import ArtifactIntegrityError, ConfigError
from modelmill.features import Entity, FeatureStore, FeatureView, Field
from modelmill.project import Project
from modelmill.store import Feedback, OfflineStore, write_labels
from modelmill.store.artifacts import ArtifactStore
from modelmill.store.database import Database

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)


def _days(n: int) -> pa.Table:
    ts = [dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=7 * i) for i in range(n)]
    return pa.table({"id": list(range(n)), "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                     "v": [float(i) for i in range(n)]})


_CLIENT: list[Any] = []


def _s3fs() -> Any:  # a client of its own (no instance or listings cache shared with the store under test)
    import s3fs

    if not _CLIENT:
        _CLIENT.append(s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False))
    return _CLIENT[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_memory_url_store_reads_what_it_wrote() -> None:
    """The issue's first symptom: DuckDB read no fsspec URL, so ``memory://`` wrote and then found no files."""
    store = OfflineStore(f"memory://mm-{os.getpid()}-{id(object())}")
    store.write("t", _days(10), time_column="ts", batch_id="b1")
    assert store.read("t").num_rows == 10
    assert store.tables() == ["t"] and store.exists("t")
    with store.connect(["t"]) as con:
        assert con.sql("SELECT count(DISTINCT event_date) FROM t").fetchall() == [(3,)]
    assert store.remove_batch("t", "b1") == 3 and not store.exists("t")


def test_write_read_replace_and_remove_batch_on_s3(s3_bucket: str) -> None:
    store = OfflineStore(f"{s3_bucket}/offline")
    files = store.write("t", _days(10), time_column="ts", batch_id="b1")
    assert len(files) == 3 and all(f.startswith(s3_bucket[5:]) for f in files)
    store.write("t", _days(4), time_column="ts", batch_id="b2")
    assert store.read("t").num_rows == 14
    assert store.tables() == ["t"]
    # Writing batch b1 again replaces its files instead of adding rows (a PUT over a key replaces it whole).
    store.write("t", _days(10), time_column="ts", batch_id="b1")
    assert store.read("t").num_rows == 14
    assert store.read("t", columns=["v"], where="id >= 8").num_rows == 2
    # No temporary names on an object store: only the final keys exist.
    keys = _s3fs().find(f"{s3_bucket[5:]}/offline")
    assert sorted(Path(k).name for k in keys) == ["b1.parquet"] * 3 + ["b2.parquet"]
    assert store.remove_batch("t", "b1") == 3 and store.remove_batch("t", "b1") == 0
    assert sorted(store.read("t").column("id").to_pylist()) == [0, 1, 2, 3]


def test_a_file_another_host_writes_is_read_next_time(s3_bucket: str) -> None:
    """No listings cache: a reader sees what another writer (another s3fs client) added since its last read."""
    store = OfflineStore(f"{s3_bucket}/offline")
    store.write("t", _days(3), time_column="ts", batch_id="mine")
    assert store.read("t").num_rows == 3
    other = _s3fs()
    with other.open(f"{s3_bucket[5:]}/offline/t/event_date=2024-01-01/theirs.parquet", "wb") as fh:
        pq.write_table(_days(2), fh)
    assert store.read("t").num_rows == 5
    other.rm(f"{s3_bucket[5:]}/offline/t/event_date=2024-01-01/theirs.parquet")
    assert store.read("t").num_rows == 3


def _events(seed: int = 3) -> tuple[pa.Table, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n = 3000
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    ts = pd.Series(base + pd.to_timedelta(rng.integers(0, 5 * 86400, n), unit="s")).dt.floor("s")
    events = pd.DataFrame({"user_id": rng.integers(0, 200, n).astype("int64"), "ts": ts,
                           "amount": rng.normal(size=n)}).drop_duplicates(["user_id", "ts"])
    rows = pd.DataFrame({"user_id": rng.integers(0, 220, 1500).astype("int64"),
                         "event_timestamp": pd.to_datetime(
                             pd.Series(base + pd.to_timedelta(rng.integers(0, 6 * 86400, 1500), unit="s")),
                             utc=True).dt.floor("s")})
    return pa.Table.from_pandas(events, preserve_index=False), rows


def _training_set(settings: Settings, events: pa.Table, rows: pd.DataFrame) -> pd.DataFrame:
    user = Entity(name="user", join_keys=["user_id"])
    view = FeatureView(name="spend", entities=[user], source="payments", timestamp_field="ts",
                       ttl=dt.timedelta(days=2), fields=[Field("amount", "float64")])
    with Project(settings) as project:
        project.offline.write("payments", events, time_column="ts")
        fs = FeatureStore(project)
        fs.apply([user, view])
        got = fs.get_training_set(rows, ["spend:amount"])
    return got.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


def test_a_point_in_time_join_on_s3_equals_the_one_on_disk(s3_bucket: str, tmp_path: Path) -> None:
    events, rows = _events()
    local = _training_set(Settings.defaults(home=tmp_path / "local"), events, rows)
    remote = _training_set(Settings.defaults(home=tmp_path / "s3").replace(offline=f"{s3_bucket}/offline"),
                           events, rows)
    assert len(local) == len(rows) and local["amount"].notna().sum() > 100  # a join with something in it
    pd.testing.assert_frame_equal(local, remote)
    # The events landed on S3, one folder per event date, and nothing under the local default.
    assert len({Path(k).parent.name for k in _s3fs().find(f"{s3_bucket[5:]}/offline/payments")}) == 5
    assert not (tmp_path / "s3" / ".modelmill" / "offline" / "payments").exists()


def _feedback(store: OfflineStore) -> dict[str, object]:
    ids = [f"r{i}" for i in range(40)]
    at = {r: T0 - dt.timedelta(hours=30) + dt.timedelta(hours=i) for i, r in enumerate(ids)}
    with prediction_log(store, at=at) as log:
        for i, rid in enumerate(ids):
            if i % 7 == 3:
                log.append_failure(rid, "m", 1, "main", None, 503, "Unavailable", 2.0)
            else:
                out = 0.02 * i
                log.append(rid, "m", 1, "main", None, ("x",), np.array([[out]]), np.array([out]), 2.0)
    counts = write_labels(store, "m", [{"id": r, "label": i % 2, "ts": T0} for i, r in enumerate(ids) if i % 3])
    again = write_labels(store, "m", [{"id": "r1", "label": 1, "ts": T0}, {"id": "nope", "label": 1}])
    fb = Feedback(store)
    labelled = fb.labelled(model="m").to_pandas().sort_values(["ts", "output"]).reset_index(drop=True)
    outcomes = fb.outcomes("m", since=0).sort_values("request_id").reset_index(drop=True)
    return {"counts": counts.as_dict(), "again": again.as_dict(), "labelled": labelled, "outcomes": outcomes}


def test_the_prediction_log_labels_and_their_join_on_s3_equal_the_ones_on_disk(s3_bucket: str,
                                                                                tmp_path: Path) -> None:
    local = _feedback(OfflineStore(str(tmp_path / "offline")))
    remote = _feedback(OfflineStore(f"{s3_bucket}/offline"))
    assert local["counts"] == remote["counts"] == {"accepted": 26, "duplicates": 0, "unknown": 0}
    assert local["again"] == remote["again"] == {"accepted": 0, "duplicates": 1, "unknown": 1}
    assert len(local["labelled"]) == 22  # 26 labelled, 4 of them failed requests  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(local["labelled"], remote["labelled"])  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(local["outcomes"], remote["outcomes"])  # type: ignore[arg-type]
    tables = {k.split("/")[2] for k in _s3fs().find(f"{s3_bucket[5:]}/offline")}
    assert tables == {"predictions", "labels"}


def test_artifacts_on_s3_are_checksummed(s3_bucket: str, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/m.db").ensure_schema()
    store = ArtifactStore(f"{s3_bucket}/artifacts", db)
    ref = store.put_bytes("models/a/1/model.bin", b"weights")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * 2**20 + 17))  # over s3fs's 5 MiB block: a multipart upload
    big = store.put_file("models/a/1/big.bin", src)
    assert store.get_bytes("models/a/1/model.bin") == b"weights" and ref.size == 7
    assert store.get_file("models/a/1/big.bin", tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert big.size == src.stat().st_size
    assert store.exists("models/a/1/big.bin") and store.uri("models/a/1/model.bin").startswith("s3://")
    # Whoever can change the object cannot change the digest it is checked against.
    _s3fs().pipe_file(f"{s3_bucket[5:]}/artifacts/models/a/1/model.bin", b"weightz")
    with pytest.raises(ArtifactIntegrityError):
        store.get_bytes("models/a/1/model.bin")
    store.delete("models/a/1/big.bin")
    assert not store.exists("models/a/1/big.bin")
    db.close()


@pytest.mark.slow
def test_an_unreachable_or_missing_store_is_a_config_error_naming_the_key(s3_server: MotoServer,
                                                                         s3_bucket: str) -> None:
    port = _free_port()
    down = OfflineStore("s3://anything/offline", storage_options={"endpoint_url": f"http://127.0.0.1:{port}"})
    with pytest.raises(ConfigError) as err:
        down.check()
    assert err.value.key == "offline" and "EndpointConnectionError" in err.value.accepted
    with pytest.raises(ConfigError) as err:
        OfflineStore("s3://mm-no-such-bucket/offline").check()
    assert err.value.key == "offline" and "does not exist" in err.value.accepted
    db = Database("sqlite://").ensure_schema()
    with pytest.raises(ConfigError) as err:
        ArtifactStore("s3://mm-no-such-bucket/a", db).check(write=True)
    assert err.value.key == "artifacts"
    OfflineStore(f"{s3_bucket}/offline").check(write=True)  # the real bucket answers and takes a probe
    assert _s3fs().find(s3_bucket[5:]) == []  # and the probe object is gone


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}, timeout=120)


@pytest.mark.slow
def test_serve_and_doctor_name_an_unreachable_object_store(s3_server: MotoServer, s3_bucket: str,
                                                                 tmp_path: Path) -> None:
    """Fail early: before a server listens, the message names the setting; doctor says why."""
    port = _free_port()
    bad = {"MODELMILL_HOME": str(tmp_path / "home"), "MODELMILL_OFFLINE": f"{s3_bucket}/offline",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    serve_port = _free_port()
    serve = _cli(["serve", "--port", str(serve_port), "m@production"], tmp_path, bad)
    assert serve.returncode != 0 and "'offline'" in serve.stderr and "Traceback" not in serve.stderr, serve.stderr
    assert not port_open("127.0.0.1", serve_port)
    doctor = _cli(["doctor", "--json"], tmp_path, bad)
    assert doctor.returncode != 0 and "Traceback" not in doctor.stderr
    offline = json.loads(doctor.stdout)["backends"]["offline"]
    assert offline["ok"] is False and "EndpointConnectionError" in offline["reason"]
    doctor = _cli(["doctor", "--json"], tmp_path, {**bad, "AWS_ENDPOINT_URL": s3_server.url})
    offline = json.loads(doctor.stdout)["backends"]["offline"]
    assert offline["ok"] is True and offline["writable"] is True and offline["protocol"] == "s3", doctor.stdout


def test_a_sink_on_an_unreachable_store_fails_before_it_consumes(s3_server: MotoServer, tmp_path: Path) -> None:
    from modelmill.ingest.schema import EventSchema
    from modelmill.ingest.schema import Field as EventField
    from modelmill.ingest.sink import OfflineSink

    schema = EventSchema(name="clicks", fields=[EventField("id", "string"), EventField("ts", "timestamp")],
                         event_id="id", event_time="ts")
    settings = Settings.defaults(home=tmp_path).replace(offline="s3://mm-no-such-bucket/offline")
    with Project(settings) as project, pytest.raises(ConfigError) as err:
        OfflineSink(project, schema).open()
    assert err.value.key == "offline"


@pytest.mark.slow
def test_doctor_checks_the_object_stores(s3_bucket: str, tmp_path: Path) -> None:
    from modelmill.doctor import check_all, check_stores

    settings = Settings.defaults(home=tmp_path).replace(offline=f"{s3_bucket}/offline",
                                                        artifacts=f"{s3_bucket}/artifacts")
    rows = {h.name: h for h in check_all(settings)}
    for key in ("offline", "artifacts"):
        assert rows[key].ok and rows[key].details == {"protocol": "s3", "writable": True}, rows[key]
    check_stores(settings)  # answers: no error
    assert _s3fs().find(s3_bucket[5:]) == []  # the probes left nothing behind
    missing = settings.replace(artifacts="s3://mm-no-such-bucket/artifacts")
    rows = {h.name: h for h in check_all(missing)}
    assert rows["offline"].ok and not rows["artifacts"].ok and "does not exist" in rows["artifacts"].reason
    with pytest.raises(ConfigError) as err:
        check_stores(missing)
    assert err.value.key == "artifacts"


def test_the_sink_removes_a_crashed_writers_objects_on_s3(s3_bucket: str, tmp_path: Path) -> None:
    """The commit protocol without rename, step by step: the orphans of a writer that uploaded its files and
    died before committing (on two event dates) are deleted by the next commit, which reuses the batch name."""
    from tests.ingest.conftest import CLICKS, clicks

    from modelmill.ingest import OfflineSink, Validator

    def batch(start: int, n: int) -> pa.Table:
        table, rejected = Validator(CLICKS).validate(clicks(n, start))
        assert not rejected
        return table

    settings = Settings.defaults(home=tmp_path).replace(offline=f"{s3_bucket}/offline")
    with Project(settings) as project:
        sink = OfflineSink(project, CLICKS).open()
        sink.commit(batch(0, 100))
        # The crashed writer's uploads under the next batch name, on a day the retry does not touch too.
        project.offline.write("clicks", batch(100, 50), time_column="ts", batch_id=f"ingest-{2:012d}")
        orphan_day = f"{s3_bucket[5:]}/offline/clicks/event_date=2023-12-31/ingest-{2:012d}.parquet"
        with _s3fs().open(orphan_day, "wb") as fh:
            pq.write_table(batch(100, 5), fh)
        assert project.offline.read("clicks").num_rows == 155  # visible until the next commit
        assert sink.commit(batch(100, 60)).num_rows == 60  # the redelivery reuses the name, removes both
        ids = sorted(project.offline.read("clicks", columns=["id"]).column("id").to_pylist())
        assert ids == [f"e{i:07d}" for i in range(160)]
        assert not _s3fs().exists(orphan_day)


def test_an_interrupted_upload_leaves_no_object(s3_bucket: str) -> None:
    """What the protocol relies on: a multipart upload that never completes (the writer was killed) is not an
    object, so no reader or listing sees half a file."""
    fs = _s3fs()
    key = f"{s3_bucket[5:]}/offline/t/event_date=2024-01-01/ingest-000000000001.parquet"
    f = fs.open(key, "wb", block_size=5 * 2**20)
    f.write(os.urandom(6 * 2**20))
    f.flush()  # one part uploaded: the multipart upload has begun
    assert f.mpu is not None and not fs.exists(key)
    assert OfflineStore(f"{s3_bucket}/offline").exists("t") is False
    f.fs.call_s3("abort_multipart_upload", Bucket=s3_bucket[5:], Key=key.split("/", 1)[1],
                 UploadId=f.mpu["UploadId"])  # as the bucket's lifecycle rule would
    f.closed = True  # the killed writer never completes it
    assert not fs.exists(key) and fs.find(s3_bucket[5:]) == []


def test_a_store_whose_client_is_not_installed_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    import importlib.util

    from modelmill.doctor import check_stores

    if importlib.util.find_spec("gcsfs") is not None:  # not a missing service: nothing to test here
        pytest.skip("gcsfs is installed: no protocol without its client to try")
    with pytest.raises(ConfigError) as err:
        OfflineStore("gcs://bucket/offline")
    assert err.value.key == "offline" and "gcsfs" in err.value.accepted
    db = Database("sqlite://").ensure_schema()
    with pytest.raises(ConfigError) as err:
        ArtifactStore("gcs://bucket/artifacts", db).exists("a")
    assert err.value.key == "artifacts"
    with pytest.raises(ConfigError) as err:
        check_stores(Settings.defaults(home=tmp_path).replace(artifacts="gcs://bucket/artifacts"))
    assert err.value.key == "artifacts"


def test_a_file_rewritten_after_stores_of_two_endpoints_is_read_fresh(s3_server: MotoServer, s3_bucket: str) -> None:
    """DuckDB's listing of a store stays fresh after another store (another endpoint) came and went between
    two of its queries: the rewritten batch is read, not the object the earlier listing named."""
    store = OfflineStore(f"{s3_bucket}/offline")
    store.write("t", _days(3), time_column="ts", batch_id="b")
    assert store.read("t").num_rows == 3
    OfflineStore("s3://elsewhere/x", storage_options={"endpoint_url": f"http://127.0.0.1:{_free_port()}"})
    store = OfflineStore(f"{s3_bucket}/offline")
    store.write("t", _days(2), time_column="ts", batch_id="b")  # the same key, other bytes
    assert store.read("t").num_rows == 2


def test_one_connections_second_query_reads_a_file_written_after_its_first(s3_bucket: str) -> None:
    """A connection that queried a table, then queried it again after another host (another s3fs client) wrote
    a file into a folder it had listed, reads the new file: the stale listing does not say it is missing.
    (The fleet's rollout controller met this: FileNotFoundError from fsspec's listings cache.)"""
    store = OfflineStore(f"{s3_bucket}/offline")
    store.write("t2", _days(3), time_column="ts", batch_id="mine")
    other = _s3fs()
    with store.connect(["t2"]) as con:
        assert con.execute("SELECT count(*) FROM t2").fetchone() == (3,)
        with other.open(f"{s3_bucket[5:]}/offline/t2/event_date=2024-01-01/theirs.parquet", "wb") as fh:
            pq.write_table(_days(2), fh)
        assert con.execute("SELECT count(*), sum(v) FROM t2").fetchone() == (5, 4.0)
