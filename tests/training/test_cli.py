"""``modelmill runs|train|pipeline`` with --json: exactly one JSON object on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import Settings
from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Runs, start_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _invoke(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON object, nothing else
    out: dict[str, object] = json.loads(lines[0])
    return out


def test_runs_list_show_compare_json(home: Path) -> None:
    ids = []
    with Project(Settings.defaults(home=home)) as project:
        for lr in (0.1, 0.2):
            with start_run("cli", project=project, data_snapshot="snap-1") as run:
                run.log_params({"lr": lr, "depth": 3})
                for step in range(3):
                    run.log_metric("auc", 0.7 + lr * step, step=step)
            ids.append(run.run_id)
    listed = _invoke("runs", "list", "--experiment", "cli")
    runs = listed["runs"]
    assert isinstance(runs, list) and [r["run_id"] for r in runs] == ids[::-1]
    assert runs[0]["metrics"]["auc"] == pytest.approx(1.1) and runs[0]["params"]["lr"] == "0.2"

    shown = _invoke("runs", "show", ids[0][:8], "--metric", "auc")
    run_info = shown["run"]
    assert isinstance(run_info, dict) and run_info["run_id"] == ids[0]
    assert run_info["data_snapshot"] == "snap-1" and run_info["metrics"]["auc"]["count"] == 3
    assert [p[0] for p in shown["history"]["auc"]] == [0, 1, 2]  # type: ignore[index]

    compared = _invoke("runs", "compare", ids[0], ids[1])
    assert compared["differs"] == ["lr"]
    assert compared["metrics"]["auc"] == {ids[0]: pytest.approx(0.9), ids[1]: pytest.approx(1.1)}  # type: ignore[index]


def _mm(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    env |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _csv(path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"dep_delay": rng.normal(size=n), "distance": rng.normal(size=n)})
    df["late"] = (df.dep_delay + 0.2 * rng.normal(size=n) > 0).astype(int)
    df.to_csv(path, index=False)
    return path


def test_train_cli_tracks_and_registers_and_errors_are_json(tmp_path: Path) -> None:
    data, home = _csv(tmp_path / "flights.csv"), tmp_path / "home"
    out = _mm(["train", "--trainer", "sklearn-hgb", "--data", str(data), "--label", "late", "-p", "max_iter=20",
               "--register", "late", "--json"], tmp_path, home)
    assert out.returncode == 0, out.stderr + out.stdout[-3000:]
    res = json.loads(out.stdout)
    assert res["metrics"]["auc"] > 0.9 and res["features"] == ["dep_delay", "distance"]
    assert res["model_version"] == "late@1" and res["data_snapshot"].startswith("file:")
    with Project(Settings.defaults(home=home)) as project:
        info = Runs(project).get(res["run_id"])
        assert info.status == "finished" and "model.joblib" in info.artifacts
        assert info.data_snapshot == res["data_snapshot"] and info.params["max_iter"] == "20"
    bad = _mm(["runs", "show", "zzzzzz", "--json"], tmp_path, home)
    assert bad.returncode == 1 and json.loads(bad.stdout)["type"] == "NotFoundError"
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_train_cli_torch_mlp_on_two_processes(tmp_path: Path) -> None:
    data, home = _csv(tmp_path / "flights.csv", n=640), tmp_path / "home"
    out = _mm(["train", "--trainer", "torch-mlp", "--data", str(data), "--label", "late", "--nproc", "2",
               "-p", "epochs=5", "-p", "batch_size=64", "-p", "hidden=[16]", "--json"], tmp_path, home)
    assert out.returncode == 0, out.stderr + out.stdout[-3000:]
    res = json.loads(out.stdout)
    hashes = res["ddp"]["rank_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and res["metrics"]["auc"] > 0.9


def test_runs_search_json_and_a_bad_filter_is_a_message(home: Path) -> None:
    ids = {}
    with Project(Settings.defaults(home=home)) as project:
        for depth, auc in ((4, 0.75), (6, 0.72), (6, 0.81), (6, 0.60)):
            with start_run("search", project=project, tags={"team": "ml"}) as run:
                run.log_params({"max_depth": depth})
                run.log_metric("auc", auc)
            ids[auc] = run.run_id
    found = _invoke("runs", "search", "metrics.auc > 0.7 and params.max_depth = 6", "--order-by", "metrics.auc DESC")
    assert [r["run_id"] for r in found["runs"]] == [ids[0.81], ids[0.72]]  # type: ignore[index]
    assert found["count"] == 2 and found["order_by"] == ["metrics.auc DESC"]
    assert found["filter"] == "metrics.auc > 0.7 and params.max_depth = 6"
    first = found["runs"][0]  # type: ignore[index]
    assert first["metrics"] == {"auc": 0.81} and first["params"] == {"max_depth": "6"} and first["tags"] == {"team": "ml"}
    assert set(first) >= {"run_id", "experiment", "status", "start_time", "params", "metrics", "tags"}
    limited = _invoke("runs", "search", "", "-e", "search", "--order-by", "metrics.auc", "--max-results", "1")
    assert [r["run_id"] for r in limited["runs"]] == [ids[0.60]]  # type: ignore[index]
    text = CliRunner().invoke(app, ["runs", "search", "metrics.auc > 0.7"])
    assert text.exit_code == 0 and "runs matching metrics.auc > 0.7: 3" in " ".join(text.stdout.split())
    bad = _mm(["runs", "search", "metrics.auc >> 0.7", "--json"], home.parent, home)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    err = json.loads(bad.stdout)
    assert err["type"] == "InputError" and err["field"] == "filter" and err["value"] == ">>"
    assert "unknown comparator '>>' at character 13" in err["error"]
    plain = _mm(["runs", "search", "params.model = CNN"], home.parent, home)
    assert plain.returncode == 2 and "write 'CNN' in quotes" in " ".join(plain.stderr.split())


# ---- train --feature-service: a non-flights table, features from definitions, served by entity keys -------------


def _credit_project(root: Path) -> Path:
    """A project folder with an ``accounts`` table (three snapshots per customer), its feature view and the
    feature service ``credit``; entity rows (customer, time, amount, label) in ``entities.csv``."""
    import datetime as dt

    import pyarrow as pa

    from modelmill.config import load_settings
    from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field

    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nlog_flush_interval_s = 0.2\n')
    rng = np.random.default_rng(11)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    n = 200
    customers = [f"c{i}" for i in range(n)]
    snaps = {"customer_id": [], "ts": [], "balance": [], "utilization": []}  # type: dict[str, list[object]]
    for day in (0, 10, 20):
        for c in customers:
            snaps["customer_id"].append(c)
            snaps["ts"].append(t0 + dt.timedelta(days=day))
            snaps["balance"].append(float(rng.normal(1000, 300)))
            snaps["utilization"].append(float(rng.uniform()))
    customer = Entity(name="customer", join_keys=("customer_id",))
    account = FeatureView(name="account", entities=(customer,), source="accounts", timestamp_field="ts",
                          fields=(Field("balance", "float64"), Field("utilization", "float64")))
    with Project(load_settings(cwd=root)) as project:
        project.offline.write("accounts", pa.table(snaps), time_column="ts")
        store = FeatureStore(project)
        store.apply([customer, account, FeatureService(name="credit", features=["account:balance",
                                                                                 "account:utilization"])])
        store.materialize(t0 - dt.timedelta(days=1), t0 + dt.timedelta(days=30))
        store.close()
    # Each label row is 5 days after a snapshot: its point-in-time features are that snapshot's.
    idx = rng.integers(0, len(snaps["ts"]), size=600)
    util = np.array(snaps["utilization"])[idx]
    pd.DataFrame({
        "customer_id": np.array(snaps["customer_id"])[idx],
        "event_timestamp": [(snaps["ts"][i] + dt.timedelta(days=5)).isoformat() for i in idx],  # type: ignore[operator]
        "amount": rng.uniform(10, 500, size=600),
        "default": (util + 0.1 * rng.normal(size=600) > 0.6).astype(int),
    }).to_csv(root / "entities.csv", index=False)
    return root


@pytest.mark.slow  # a real server and several CLI processes, ~11 s; the own-model tutorial covers the path too
def test_train_with_a_feature_service_is_served_by_the_feature_route(tmp_path: Path) -> None:
    import httpx

    from modelmill.config import load_settings
    from modelmill.registry import Registry
    from tests.serving.conftest import ServeProcess
    from tests.test_cli import mm

    root = _credit_project(tmp_path / "credit")
    built = mm(["features", "training-set", "--service", "credit", "--entities", "entities.csv", "--output",
                "train.csv", "--json"], root)
    assert built.returncode == 0, built.stdout + built.stderr
    out = mm(["train", "-t", "sklearn-hgb", "--data", "train.csv", "--label", "default", "-p", "max_iter=30",
              "--feature-service", "credit", "--register", "credit", "--json"], root)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout)
    # entity key, time and the amount the service does not serve are left out by default
    assert res["features"] == ["balance", "utilization"] and res["metrics"]["auc"] > 0.9
    assert res["feature_service"] == "credit" and res["model_version"] == "credit@1"
    assert res["feature_refs"] == {"balance": "account:balance", "utilization": "account:utilization"}
    assert res["request_features"] == []
    # the same training set joined by train itself from the entity rows: the same model
    joined = mm(["train", "-t", "sklearn-hgb", "--entities", "entities.csv", "--label", "default", "-p",
                 "max_iter=30", "--feature-service", "credit", "--features", "balance,utilization,amount",
                 "--register", "credit", "--json"], root)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    res2 = json.loads(joined.stdout)
    assert res2["model_version"] == "credit@2" and res2["request_features"] == ["amount"]
    with Project(load_settings(cwd=root)) as project:
        registry = Registry(project)
        v1, v2 = registry.get("credit", 1), registry.get("credit", 2)
        assert v1.lineage["feature_service"] == "credit" and v1.lineage["feature_definitions"] == "credit@v1"
        assert v2.lineage["feature_service"] == "credit" and v1.lineage["run_id"] == res["run_id"]
        info = Runs(project).get(res["run_id"])
        assert info.feature_version == "credit@v1" and info.tags["feature_service"] == "credit"
        model = registry.load(v2)
    assert mm(["models", "alias", "credit", "production", "2"], root).returncode == 0
    proc = ServeProcess(root, "--no-cache").wait_ready()  # no model named: the production alias is served
    try:
        body = {"entities": {"customer_id": "c7"}, "features": {"amount": 120.0}, "id": "order-1"}
        answer = httpx.post(f"{proc.url}/v1/models/credit/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["version"] == 2 and got["request_id"] == "order-1"
        online = json.loads(mm(["features", "online", "--service", "credit", "--entity", "customer_id=c7", "--json"],
                               root).stdout)["features"]
        x = np.array([[online["account:balance"]["value"], online["account:utilization"]["value"], 120.0]])
        assert got["prediction"] == pytest.approx(float(np.ravel(model.predict(x))[0]), abs=1e-9)
        lacking = httpx.post(f"{proc.url}/v1/models/credit/predict", json={"entities": {"customer_id": "c7"}},
                             timeout=10)
        assert lacking.status_code == 400 and "amount" in lacking.text  # the request-time feature is required
    finally:
        proc.stop()


def test_train_with_a_feature_service_fails_clearly_when_it_cannot_serve_the_model(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch
                                                                                   ) -> None:
    from modelmill.errors import ModelmillError, NotFoundError

    root = _credit_project(tmp_path / "credit")
    monkeypatch.chdir(root)
    for key in ("HOME", "DB", "ONLINE", "OFFLINE", "ARTIFACTS"):
        monkeypatch.delenv(f"MODELMILL_{key}", raising=False)
    other = _csv(root / "other.csv")  # dep_delay, distance: nothing the service serves

    def error(*args: str) -> ModelmillError:
        result = CliRunner().invoke(app, ["train", "-t", "sklearn-hgb", "--label", *args, "--json"])
        assert isinstance(result.exception, ModelmillError), result.output
        return result.exception

    missing = error("late", "--data", str(other), "--feature-service", "nope")
    assert isinstance(missing, NotFoundError) and "feature service 'nope' not found" in missing.message
    none = error("late", "--data", str(other), "--feature-service", "credit")
    assert isinstance(none, InputError) and none.field == "--feature-service"
    assert "serves none of the training columns" in none.message and "account:balance" in none.message
    assert "modelmill features training-set --service credit" in none.message
    assert "needs --feature-service" in error("default", "--entities", "entities.csv").message
    assert "not both" in error("default", "--entities", "entities.csv", "--data", str(other),
                               "--feature-service", "credit").message
    assert "give the training data" in error("default").message
    with Project(Settings.defaults(home=root / ".modelmill")) as project:
        assert Runs(project).find() == []  # nothing was trained or tracked
