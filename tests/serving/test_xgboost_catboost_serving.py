"""XGBoost and CatBoost end to end: `modelmill train` (the CLI) registers them, a real `modelmill serve`
answers over REST and over tritonclient (HTTP and gRPC) with the native models' scores."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import load_settings
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.security import TokenStore
from tests.serving.conftest import ServeProcess, free_port

pytest.importorskip("xgboost")
pytest.importorskip("catboost")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow  # three CLI trainings and one server with two protocols (about 10 s)

COLS = ["a", "b", "c"]


def _frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n) for c in COLS})
    df["late"] = (df.a + 0.5 * df.b > 0).astype(int)
    df["kind"] = np.where(df.a > 0.5, "cat", np.where(df.a < -0.5, "fish", "dog"))
    return df


class Served:
    def __init__(self, proc: ServeProcess, grpc_port: int, natives: dict[str, Any], admin: str) -> None:
        self.proc, self.grpc_port, self.natives, self.admin = proc, grpc_port, natives, admin


def _cli_train(*args: str) -> dict[str, Any]:
    out = CliRunner().invoke(app, ["train", *args, "--json"])
    assert out.exit_code == 0, out.output
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("boost") / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\ncache = false\n')
    data = root / "train.csv"
    _frame().to_csv(data, index=False)
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MODELMILL_")]:
            mp.delenv(key)
        mp.chdir(root)
        docs = {
            "churn": _cli_train("--trainer", "xgboost", "--data", str(data), "--label", "late", "--features",
                                "a,b,c", "-p", "n_estimators=30", "--register", "churn"),
            "animals": _cli_train("--trainer", "catboost", "--task", "multiclass", "--data", str(data), "--label",
                                  "kind", "--features", "a,b,c", "-p", "iterations=30", "--register", "animals"),
            "kinds": _cli_train("--trainer", "xgboost", "--task", "multiclass", "--data", str(data), "--label",
                                "kind", "--features", "a,b,c", "-p", "n_estimators=20", "--register", "kinds"),
        }
        bad = CliRunner().invoke(app, ["train", "--trainer", "xgboost", "--data", str(data), "--label", "late",
                                       "-p", "n_trees=3"])
    assert bad.exit_code != 0 and "n_trees" in str(bad.exception)
    assert docs["churn"]["model_version"] == "churn@1" and docs["churn"]["metrics"]["auc"] > 0.95
    assert set(docs["kinds"]["metrics"]) == {"log_loss", "macro_f1", "accuracy"}
    assert docs["animals"]["metrics"]["accuracy"] > 0.9
    clear_cache()
    project = Project(load_settings(cwd=root))
    reg = Registry(project)
    natives = {name: reg.load(f"{name}@1").raw for name in docs}
    assert [reg.resolve(f"{n}@1").flavor for n in docs] == ["xgboost", "catboost", "xgboost"]
    _, admin = TokenStore(project).create("admin", name="boost")
    project.close()
    clear_cache()
    port = free_port()
    proc = ServeProcess(root, "--model", "churn@1", "--model", "animals@1", "--model", "kinds@1",
                        "--grpc-port", str(port))
    try:
        yield Served(proc.wait_ready(), port, natives, admin)
    finally:
        proc.stop()


X = np.random.default_rng(7).normal(size=(6, 3))


def _oip(X: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(X)], "data": X[:, i].tolist()}
                       for i, c in enumerate(COLS)]}


def test_rest_infer_scores_like_the_native_models(served: Served) -> None:
    r = httpx.post(f"{served.proc.url}/v2/models/churn/infer", json=_oip(X), timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], served.natives["churn"].predict_proba(X)[:, 1],
                               rtol=1e-6)
    for name in ("animals", "kinds"):
        meta = httpx.get(f"{served.proc.url}/v2/models/{name}", timeout=10).json()
        assert meta["task"] == "multiclass" and meta["classes"] == ["cat", "dog", "fish"]
        r = httpx.post(f"{served.proc.url}/v2/models/{name}/infer", json=_oip(X), timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        proba = served.natives[name].predict_proba(X)
        np.testing.assert_allclose(np.asarray(out[0]["data"]).reshape(len(X), 3), proba, rtol=1e-6)
        assert out[1]["data"] == np.asarray(["cat", "dog", "fish"])[proba.argmax(axis=1)].tolist()


def test_rest_refuses_a_bad_request_with_a_named_field(served: Served) -> None:
    body = _oip(X)
    body["inputs"] = body["inputs"][:2]
    r = httpx.post(f"{served.proc.url}/v2/models/churn/infer", json=body, timeout=10)
    assert r.status_code in (400, 422) and "c" in r.text


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, served: Served) -> Iterator[tuple[Any, Any]]:
    if request.param == "http":
        c: Any = httpclient.InferenceServerClient(url=served.proc.url.removeprefix("http://"))
        mod: Any = httpclient
    else:
        c, mod = grpcclient.InferenceServerClient(url=f"127.0.0.1:{served.grpc_port}"), grpcclient
    yield mod, c
    c.close()


def _inputs(mod: Any, X: np.ndarray) -> list[Any]:
    out = []
    for i, c in enumerate(COLS):
        t = mod.InferInput(c, [len(X)], "FP64")
        t.set_data_from_numpy(np.ascontiguousarray(X[:, i]))
        out.append(t)
    return out


def test_tritonclient_infers_the_xgboost_and_catboost_models(client: tuple[Any, Any], served: Served) -> None:
    mod, c = client
    assert c.is_model_ready("churn") and c.is_model_ready("animals")
    got = c.infer("churn", _inputs(mod, X)).as_numpy("output")
    np.testing.assert_allclose(got, served.natives["churn"].predict_proba(X)[:, 1], rtol=1e-6)
    result = c.infer("animals", _inputs(mod, X))
    proba = served.natives["animals"].predict_proba(X)
    np.testing.assert_allclose(result.as_numpy("output"), proba, rtol=1e-6)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert labels == served.natives["animals"].predict(X).reshape(-1).tolist()


def test_config_statistics_and_repository_of_the_xgboost_model(client: tuple[Any, Any], served: Served) -> None:
    mod, c = client
    grpc = mod is grpcclient
    cfg = c.get_model_config("kinds")
    dims = list(cfg.config.output[0].dims) if grpc else cfg["output"][0]["dims"]
    assert dims == [3]

    def count() -> int:
        stats = c.get_inference_statistics("churn")
        return int(stats.model_stats[0].inference_count if grpc else stats["model_stats"][0]["inference_count"])

    before = count()
    c.infer("churn", _inputs(mod, X[:2]))
    assert count() - before == 2
    admin = {("authorization" if grpc else "Authorization"): f"Bearer {served.admin}"}
    c.unload_model("churn", headers=admin)
    assert not c.is_model_ready("churn")
    index = c.get_model_repository_index()
    states = {m.name: m.state for m in index.models} if grpc else {e["name"]: e["state"] for e in index}
    assert states["churn"] == "UNAVAILABLE"
    c.load_model("churn", headers=admin)
    assert c.is_model_ready("churn")
