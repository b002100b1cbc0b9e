"""Triton's extensions that tritonclient calls, with the real tritonclient.http against `modelmill serve`:
model configuration, statistics (counts and durations per model and version), and the model repository
(index, load, unload; load and unload need an admin token)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from modelmill.config import load_settings
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.registry.signature import infer_signature
from modelmill.security import TokenStore
from tests.serving.conftest import COLUMNS, N_FEATURES, ServeProcess, signature, train_lr
from tests.serving.test_datatypes import _frame, pipeline

pytestmark = pytest.mark.slow  # a real modelmill serve for the module (~25 s in all)


class Served:
    def __init__(self, proc: ServeProcess, admin: str, reader: str) -> None:
        self.proc, self.admin, self.reader = proc, admin, reader


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("triton") / "proj"
    root.mkdir()
    # no prediction cache: every request reaches the model, so the counts below are exact
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\ncache = false\n')
    clear_cache()
    project = Project(load_settings(cwd=root))
    reg = Registry(project)
    reg.register("clf", train_lr(0), flavor="sklearn", signature=signature())
    reg.register("clf", train_lr(1), flavor="sklearn", signature=signature())
    reg.set_alias("clf", "production", 1)
    reg.register("cities", pipeline(), flavor="sklearn", signature=infer_signature(_frame(3, 1)))
    tokens = TokenStore(project)
    _, admin = tokens.create("admin", name="ext-admin")
    _, reader = tokens.create("read", name="ext-reader")
    project.close()
    clear_cache()
    proc = ServeProcess(root, "--model", "clf@production")
    try:
        yield Served(proc.wait_ready(), admin, reader)
    finally:
        proc.stop()


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url=served.proc.url.removeprefix("http://"))
    yield c
    c.close()


def _inputs(X: np.ndarray) -> list[Any]:
    import tritonclient.http as httpclient

    out = []
    for i, c in enumerate(COLUMNS):
        t = httpclient.InferInput(c, [len(X)], "FP64")
        t.set_data_from_numpy(X[:, i].copy())
        out.append(t)
    return out


def test_model_config(client: Any) -> None:
    cfg = client.get_model_config("clf")
    assert cfg["name"] == "clf" and cfg["platform"] == "modelmill" and cfg["backend"] == "sklearn"
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [(c, "TYPE_FP64", [1]) for c in COLUMNS]
    assert cfg["output"] == [{"name": "output", "data_type": "TYPE_FP64", "dims": [1]}]
    assert cfg["version_policy"] == {"specific": {"versions": ["1"]}}
    assert len(cfg["parameters"]["sha256"]["string_value"]) == 64
    assert client.get_model_config("clf", "1")["name"] == "clf"
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_config("nope")
    with pytest.raises(InferenceServerException, match="versions being served: 1"):
        client.get_model_config("clf", "2")


def test_statistics_count_requests_rows_and_their_parts(client: Any) -> None:
    from tritonclient.utils import InferenceServerException

    def stat() -> dict[str, Any]:
        [entry] = client.get_inference_statistics("clf")["model_stats"]
        return entry

    before = stat()
    rng = np.random.default_rng(7)
    for _ in range(4):
        client.infer("clf", _inputs(rng.normal(size=(3, N_FEATURES))))
    bad = _inputs(rng.normal(size=(3, N_FEATURES)))[:-1]  # misses a column: refused after the version was chosen
    with pytest.raises(InferenceServerException, match="misses f19"):
        client.infer("clf", bad)
    after = stat()
    assert after["name"] == "clf" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 12  # rows
    assert 1 <= after["execution_count"] - before["execution_count"] <= 4  # batches: requests may share one
    s0, s1 = before["inference_stats"], after["inference_stats"]
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[kind]["count"] - s0[kind]["count"] == 4, kind
        assert s1[kind]["ns"] >= s0[kind]["ns"], kind
    assert s1["compute_infer"]["ns"] > s0["compute_infer"]["ns"]
    assert s1["fail"]["count"] - s0["fail"]["count"] == 1
    # a request's parts never add up to more than the whole of it
    parts = sum(s1[k]["ns"] for k in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert parts <= s1["success"]["ns"]
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    assert after["last_inference"] > 0
    # per version; all models; an unknown model or version is a 404
    assert client.get_inference_statistics("clf", "1")["model_stats"][0]["version"] == "1"
    assert {e["name"] for e in client.get_inference_statistics()["model_stats"]} >= {"clf"}
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_inference_statistics("nope")
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_inference_statistics("clf", "2")


def test_repository_index_load_and_unload(client: Any, served: Served) -> None:
    import pandas as pd
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["clf"] == {"name": "clf", "version": "1", "state": "READY", "reason": ""}
    assert index["cities"]["state"] == "UNAVAILABLE" and "not loaded" in index["cities"]["reason"]
    assert not client.is_model_ready("cities")

    # load and unload are admin calls
    with pytest.raises(InferenceServerException, match="needs an API token"):
        client.load_model("cities")
    with pytest.raises(InferenceServerException, match="role admin"):
        client.load_model("cities", headers={"Authorization": f"Bearer {served.reader}"})
    admin = {"Authorization": f"Bearer {served.admin}"}
    client.load_model("cities", headers=admin)
    assert client.is_model_ready("cities")
    assert {e["name"] for e in client.get_model_repository_index()} >= {"clf", "cities"}
    t_city = httpclient.InferInput("city", [2], "BYTES")
    t_city.set_data_from_numpy(np.array([b"rome", b"paris"], dtype=object))
    t_x = httpclient.InferInput("x", [2], "FP64")
    t_x.set_data_from_numpy(np.array([0.5, -0.5]))
    t_n = httpclient.InferInput("n", [2], "INT64")
    t_n.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    got = client.infer("cities", [t_city, t_x, t_n]).as_numpy("output")
    expected = pipeline().predict_proba(pd.DataFrame({"city": ["rome", "paris"], "x": [0.5, -0.5], "n": [1, 2]}))
    np.testing.assert_allclose(got, expected[:, 1], rtol=1e-12)
    ready = {e["name"] for e in client.get_model_repository_index(headers=None)} & {"clf", "cities"}
    assert ready == {"clf", "cities"}

    client.unload_model("cities", headers=admin)
    assert not client.is_model_ready("cities")
    with pytest.raises(InferenceServerException, match="not found"):
        client.infer("cities", [t_city, t_x, t_n])
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["cities"]["state"] == "UNAVAILABLE" and "unloaded" in index["cities"]["reason"]
    assert client.is_server_ready()  # an unloaded model is not wanted: the server stays ready
    # the statistics of a version outlive its unloading
    [entry] = client.get_inference_statistics("cities")["model_stats"]
    assert entry["inference_count"] == 2

    # unknown models; unloading what is not loaded; Triton's config override is refused
    with pytest.raises(InferenceServerException, match="'nope' not found"):
        client.load_model("nope", headers=admin)
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.unload_model("cities", headers=admin)
    with pytest.raises(InferenceServerException, match=r"parameters\.config"):
        client.load_model("cities", headers=admin, config='{"max_batch_size": 8}')
    # the configured model can be unloaded and loaded back; its alias still decides the version
    client.unload_model("clf", headers=admin)
    assert not client.is_model_ready("clf")
    client.load_model("clf", headers=admin)
    assert client.get_model_metadata("clf")["versions"] == ["1"]


def test_ready_index_and_bad_bodies(served: Served) -> None:
    url = served.proc.url
    r = httpx.post(f"{url}/v2/repository/index", json={"ready": True})
    assert r.status_code == 200 and all(e["state"] == "READY" for e in r.json())
    r = httpx.post(f"{url}/v2/repository/index", json={"ready": "yes"})
    assert r.status_code == 400 and "ready" in r.json()["error"]
    r = httpx.post(f"{url}/v2/repository/index", content=b"[1")
    assert r.status_code == 400 and "body" in r.json()["error"]
    r = httpx.post(f"{url}/v2/repository/models/clf/load", content=b"[]",
                   headers={"Authorization": f"Bearer {served.admin}"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    assert httpx.get(f"{url}/v2").json()["extensions"] == ["binary_tensor_data", "model_repository",
                                                          "model_configuration", "statistics"]
