"""The store how-tos (docs/howto/object-storage.md, docs/howto/scale-out-ingestion.md), each run as written.

object-storage.md runs against moto's S3 server, started here on a free port (``tests/s3.py``'s
``start_moto``) and stopped after the module; the page sets the AWS_* variables in its own shell, so this
process's environment never points at it (other modules of the same pytest run use their own moto).
scale-out-ingestion.md runs consumers of one group against Tansu (Kafka, on a free port, stopped after the
module) and the shared NATS JetStream (a stream of its own, deleted afterwards). The tests read what the
pages' commands wrote, and the bucket itself, and check them against what the pages' data says must come out.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import need, port_open
from tests.s3 import MotoServer, start_moto
from tests.tutorials.runner import HOWTO, blocks, free_port
from tests.tutorials.runner import read_json as _json
from tests.tutorials.runner import run_howto as _run

ROOT = Path(__file__).resolve().parents[2]
# each page is run once by its module fixture, inside its first test's time: ten CLI commands and more
pytestmark = pytest.mark.timeout(600)
CLI = [str(Path(sys.executable).parent / "modelmill")]


def _help(*command: str) -> str:
    done = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _console(page: str) -> list[str]:
    return [b.body for b in blocks(HOWTO / page) if b.lang == "console"]


# --- object-storage.md -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def object_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """The page's folder, and an s3fs client of the test's own on the page's (still running) moto."""
    need(importlib.util.find_spec("s3fs") is not None, "s3fs is not installed", "run scripts/moto.sh install")
    try:
        moto: MotoServer = start_moto(port=free_port())
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        need(False, f"moto (S3 API server) could not start: {exc}", "run scripts/moto.sh")
        raise
    try:
        import s3fs

        with pytest.MonkeyPatch.context() as mp:  # the page's port; its AWS_* variables it sets itself
            mp.setenv("MOTO_PORT", str(moto.port))
            workdir = _run("object-storage.md", tmp_path_factory.mktemp("object-storage"))
        fs = s3fs.S3FileSystem(endpoint_url=moto.url, key="test", secret="test", skip_instance_cache=True,
                               use_listings_cache=False)
        yield workdir, fs
    finally:
        moto.stop()
    assert not port_open(moto.host, moto.port) or not moto.started


@pytest.mark.slow
def test_object_storage_doctor_sees_both_stores_on_s3_and_names_a_missing_bucket(
        object_storage: tuple[Path, Any]) -> None:
    w, fs = object_storage
    assert "MOTO_PORT" not in os.environ and os.environ.get("AWS_ENDPOINT_URL") != fs.endpoint_url  # not leaked
    doctor = _json(w, "doctor.json")
    assert doctor["ok"] is True
    for store in ("artifacts", "offline"):
        row = doctor["backends"][store]
        assert (row["ok"], row["protocol"], row["writable"]) == (True, "s3", True), row
    assert doctor["backends"]["offline"]["url"] == "s3://ml-data/modelmill/offline"
    assert doctor["backends"]["artifacts"]["url"] == "s3://ml-data/modelmill/artifacts"

    typo = _json(w, "typo.json")
    assert typo["ok"] is False
    reason = typo["backends"]["offline"]["reason"]
    assert "setting 'offline'" in reason and "bucket 'ml-dta' does not exist" in reason, reason
    assert typo["backends"]["artifacts"]["ok"] is True  # only the misspelt store fails


@pytest.mark.slow
def test_object_storage_ingests_each_order_once_into_the_bucket(object_storage: tuple[Path, Any]) -> None:
    w, fs = object_storage
    assert _json(w, "published.json")["published"] == 200
    first, again = _json(w, "ingested.json"), _json(w, "ingested-again.json")
    assert (first["polled"], first["written"], first["duplicates"], first["dead_letters"]) == (200, 200, 0, 0)
    assert (again["polled"], again["written"], again["duplicates"]) == (200, 0, 200)

    # the test's own client: one file per event date of the one batch that wrote, and every order once
    files = sorted(fs.find("ml-data/modelmill/offline/orders"))
    assert files == [f"ml-data/modelmill/offline/orders/event_date=2026-11-0{d}/ingest-000000000001.parquet"
                     for d in (1, 2)]
    orders = pd.read_parquet("ml-data/modelmill/offline/orders", filesystem=fs)
    assert len(orders) == 200 and set(orders.order_id) == {f"o-{i}" for i in range(200)}
    assert orders.amount.sum() == pytest.approx(sum(10.0 + i for i in range(200)))
    bucket = _json(w, "bucket.json")
    assert (bucket["orders"], bucket["distinct"]) == (200, 200)
    assert not list((w / ".modelmill").glob("offline*")), "the offline store was written to the local folder"


@pytest.mark.slow
def test_object_storage_keeps_the_model_in_the_bucket_and_scores_with_it(object_storage: tuple[Path, Any]) -> None:
    w, fs = object_storage
    trained = _json(w, "trained.json")
    assert trained["model_version"] == "churn@1" and trained["features"] == ["tenure", "spend"]
    assert trained["metrics"]["auc"] > 0.95  # the label is tenure > spend: trees learn it well
    keys = set(fs.find("ml-data/modelmill/artifacts"))
    assert f"ml-data/modelmill/artifacts/{trained['artifact']}" in keys
    assert [k for k in keys if k.startswith("ml-data/modelmill/artifacts/models/churn/")
            and k.endswith("/model.joblib")]
    assert "ml-data/modelmill/artifacts/monitoring/references/churn/1.npz" in keys
    assert set(_json(w, "bucket.json")["keys"]) == set(fs.find("ml-data"))
    assert not (w / ".modelmill" / "artifacts").exists()

    assert _json(w, "scored.json")["rows"] == 50
    scored = pd.read_parquet(w / "scored.parquet")
    assert len(scored) == 50 and scored.prediction.between(0, 1).all()
    truth = (scored.tenure > scored.spend).astype(int)
    assert ((scored.prediction >= 0.5).astype(int) == truth).mean() >= 0.9


@pytest.mark.slow
def test_object_storage_console_blocks_name_what_exists() -> None:
    shown = "\n".join(_console("object-storage.md"))
    assert "scripts/moto.sh install" in shown and "modelmill[s3]" in shown
    script = (ROOT / "scripts" / "moto.sh").read_text()
    assert "install|start|stop" in script and "MOTO_PORT" in script
    assert "s3" in _extras()
    assert (ROOT / "benchmarks" / "object_store.py").exists() and (ROOT / "tests" / "ingest" / "test_crash_s3.py").exists()


def _extras() -> dict[str, Any]:
    import tomllib

    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])



# --- scale-out-ingestion.md --------------------------------------------------------------------------------

NATS_URL = "nats://127.0.0.1:4222"
TANSU = ROOT / "scripts" / "tansu.sh"


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The page run with Tansu on a free port (stopped afterwards) and a NATS stream of its own (deleted)."""
    need(port_open("127.0.0.1", 4222), "NATS is not reachable at 127.0.0.1:4222", "start it with scripts/services.sh")
    need(importlib.util.find_spec("confluent_kafka") is not None, "confluent-kafka is not installed",
         "pip install 'modelmill[kafka]'")
    port = free_port()
    tansu_env = {**os.environ, "TANSU_PORT": str(port)}
    done = subprocess.run(["bash", str(TANSU)], env=tansu_env, capture_output=True, text=True, timeout=60)
    stream = f"mmt-{uuid.uuid4().hex[:10]}"
    try:
        need(done.returncode == 0 and port_open("127.0.0.1", port),
             f"Tansu (Kafka) did not start: {(done.stdout + done.stderr)[-500:]}", "pip install 'modelmill[kafka]'")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KAFKA_PORT", str(port))
            mp.setenv("NATS_STREAM", stream)
            yield _run("scale-out-ingestion.md", tmp_path_factory.mktemp("scale-out"), timeout=300)
    finally:
        subprocess.run(["bash", str(TANSU), "stop"], env=tansu_env, capture_output=True, timeout=30)
        try:
            from modelmill.ingest.jetstream import delete_stream

            delete_stream(NATS_URL, stream)
        except Exception:  # the page may have failed before it created the stream
            pass


def _answers(w: Path, names: list[str]) -> list[dict[str, Any]]:
    return [_json(w, n) for n in names]


@pytest.mark.slow
def test_scale_out_kafka_group_of_three_writes_each_event_once(scale_out: Path) -> None:
    w = scale_out
    answers = _answers(w, [f"kafka-etl-{i}.json" for i in (1, 2, 3)])
    assert all(a["source"].startswith("kafka://127.0.0.1:") and a["dead_letters"] == 0 for a in answers)
    # together the group wrote every event once; whatever two members both read across a rebalance, the
    # second counted as a duplicate
    assert sum(a["written"] for a in answers) == 3000, answers
    assert sum(a["polled"] for a in answers) == 3000 + sum(a["duplicates"] for a in answers), answers
    # the page's partition sizes: the user key, murmur2 mod 3, as the Java client places it
    from modelmill.features.aggregations import shard_of

    sizes = sorted(collections.Counter(shard_of(str(i % 50), 3) for i in range(3000)).values())
    assert sizes == [660, 1020, 1320]


@pytest.mark.slow
def test_scale_out_nats_group_of_two_writes_each_event_once(scale_out: Path) -> None:
    w = scale_out
    assert _json(w, "published-nats.json")["published"] == 3000
    answers = _answers(w, ["nats-1.json", "nats-2.json"])
    assert all(a["stream"].startswith("mmt-") for a in answers)  # the test's own stream, not 'clicks'
    assert sum(a["written"] for a in answers) == 3000, answers
    assert sum(a["polled"] for a in answers) == 3000 + sum(a["duplicates"] for a in answers), answers


@pytest.mark.slow
def test_scale_out_offline_store_holds_every_event_exactly_once(scale_out: Path) -> None:
    w = scale_out
    clicks = pd.read_parquet(w / ".modelmill" / "offline" / "clicks")
    expected = {f"{b}-{i}" for b in ("kafka", "nats") for i in range(3000)}
    assert len(clicks) == 6000 and set(clicks["id"]) == expected
    assert clicks.groupby("user").size().eq(120).all()  # 50 users, 60 clicks each per broker
    summary = _json(w, "offline.json")
    assert (summary["rows"], summary["distinct"]) == (6000, 6000)
    assert summary["by_broker"] == {"kafka": 3000, "nats": 3000}
    assert sum(summary["written"].values()) == 6000


@pytest.mark.slow
def test_scale_out_console_blocks_use_flags_that_exist() -> None:
    [kinesis] = _console("scale-out-ingestion.md")
    run_help, publish_help = _help("ingest", "run"), _help("ingest", "publish")
    for flag in ("--schema", "--source", "--group", "--consumer", "--idle-timeout", "--stream", "--json"):
        assert flag in run_help, flag
    for flag in ("--broker", "--partitions", "--stream"):
        assert flag in publish_help, flag
    assert kinesis.count("modelmill ingest run") == 2 and "kinesis://?region=eu-west-1" in kinesis
    from modelmill.features.aggregations import partition_key
    from modelmill.ingest.kinesis import KinesisPublisher
    from modelmill.ingest.source import open_source

    assert callable(partition_key) and KinesisPublisher.__name__
    # the Kinesis URL of the console block parses (a bad one is refused before anything is reached)
    assert open_source("kinesis://?region=eu-west-1", stream="clicks", group="etl", consumer="etl-1") is not None
    with pytest.raises(Exception, match="broker: a Kinesis URL names the endpoint only"):  # as the page says
        open_source("kinesis://127.0.0.1:4567/clicks", stream="clicks", group="etl", consumer="etl-1")
    assert (ROOT / "scripts" / "install-kinesalite.sh").exists() and (ROOT / "tests" / "ingest" / "test_kinesis.py").exists()
