"""The tritonclient suite against one real `modelmill serve` (HTTP and gRPC) on five models: a multiclass model, a
regression model, a model with string inputs, an XGBoost model and a ``python``-flavour model. Every step (metadata,
infer, config, statistics, repository index/unload/load) runs for every model over both protocols, and each
asserts what the model itself implies: its signature's names and types, its local predictions, the exact number of
requests and rows sent."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelmill.config import load_settings
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.registry.python_flavor import PythonContext
from modelmill.registry.signature import Field, Signature, infer_signature
from modelmill.security import TokenStore
from tests.conftest import need
from tests.serving.conftest import ServeProcess, free_port
from tests.serving.test_datatypes import _frame, pipeline
from tests.serving.test_tasks import COLS, models

pytestmark = pytest.mark.slow  # one server for the module, five models, two protocols (about 20 s)

HAVE_XGBOOST = importlib.util.find_spec("xgboost") is not None
MODELS = ["animals", "price", "cities", "boosted", "custom"]
PROTOCOLS = ["http", "grpc"]

# The python-flavour model: pre-processing (a standardisation whose means and scales are an artifact), a linear
# score, and post-processing (a logistic squashed to a 0-100 score, clipped to [1, 99]). Its source lives in a
# folder the server never sees: the server gets the class from the bundle alone.
SOURCE = '''
import json

import numpy as np


class Scorer:
    def load(self, context):
        self.p = json.loads(context.artifacts["coef.json"].read_text())

    def predict(self, frame):
        X = frame[self.p["columns"]].to_numpy(dtype=float)
        z = ((X - self.p["mean"]) / self.p["scale"]) @ self.p["w"] + self.p["b"]
        return np.clip(100.0 / (1.0 + np.exp(-z)), 1.0, 99.0)
'''
COEF = {"columns": COLS, "mean": [0.1, -0.2, 0.0], "scale": [1.5, 0.5, 2.0], "w": [0.8, -1.2, 2.5], "b": 0.3}


@dataclasses.dataclass
class Case:
    """One served model: the tensors a request sends, and what every step must answer for it."""

    name: str
    inputs: list[tuple[str, str, np.ndarray]]  # (name, datatype, data)
    outputs: dict[str, tuple[str, list[int], Any]]  # name -> (datatype, shape, the local model's answer)

    @property
    def rows(self) -> int:
        return len(self.inputs[0][2])


def _numeric_inputs(X: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    return [(c, "FP64", np.ascontiguousarray(X[:, i])) for i, c in enumerate(COLS)]


def _boost_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n) for c in COLS})
    df["late"] = (df.a + 0.5 * df.b - 0.3 * df.c > 0).astype(int)
    return df


def _python_class(code: Path) -> Any:
    """The user's class, imported from its own folder (as its author would, outside the project)."""
    spec = importlib.util.spec_from_file_location("suite_scorer", code / "suite_scorer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["suite_scorer"] = module  # until registered: the flavour reads the class's source through it
    spec.loader.exec_module(module)
    return module.Scorer


class Served:
    def __init__(self, proc: ServeProcess, grpc_port: int, admin: str, cases: dict[str, Case]) -> None:
        self.proc, self.grpc_port, self.admin, self.cases = proc, grpc_port, admin, cases


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("suite")
    root, code = base / "proj", base / "usercode"
    root.mkdir()
    code.mkdir()
    (code / "suite_scorer.py").write_text(SOURCE)
    (code / "coef.json").write_text(json.dumps(COEF))
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\ncache = false\n')
    fitted = {**models(), "cities": pipeline()}
    scorer_cls = _python_class(code)
    numeric = Signature(inputs=[Field(c) for c in COLS])
    clear_cache()
    project = Project(load_settings(cwd=root))
    try:
        reg = Registry(project)
        reg.register("animals", fitted["animals"], flavor="sklearn", signature=numeric)
        reg.register("price", fitted["price"], flavor="sklearn", signature=numeric)
        reg.register("cities", fitted["cities"], flavor="sklearn", signature=infer_signature(_frame(3, 1)))
        custom_sig = Signature(inputs=[Field(c, "float64") for c in COLS], outputs=[Field("score", "float64")])
        reg.register("custom", scorer_cls(), flavor="python", signature=custom_sig,
                     options={"artifacts": {"coef.json": code / "coef.json"}})
        names = ["animals", "price", "cities", "custom"]
        if HAVE_XGBOOST:
            from modelmill.training.trainers import train

            res = train("xgboost", _boost_frame(400, 0), "late", features=COLS, n_estimators=30)
            assert res.flavor == "xgboost" and res.metrics["auc"] > 0.9
            fitted["boosted"] = res.native
            reg.register("boosted", res.native, flavor="xgboost", signature=numeric)
            names.append("boosted")
        _, admin = TokenStore(project).create("admin", name="suite")
    finally:
        project.close()
        sys.modules.pop("suite_scorer", None)
        clear_cache()

    # What each model answers locally, computed from the fitted objects (not through modelmill's serving).
    rng = np.random.default_rng(8)
    X_animals, X_price, X_custom = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), rng.normal(size=(7, 3))
    cities = pd.DataFrame({"city": ["oslo", "rome", "tokyo"], "x": [0.3, -0.2, 1.1], "n": np.array([2, 0, 4])})
    local = scorer_cls()
    local.load(PythonContext(artifacts={"coef.json": code / "coef.json"}, signature=custom_sig, source_sha256="",
                             bundle_sha256=""))
    cases = {
        "animals": Case("animals", _numeric_inputs(X_animals), {
            "output": ("FP64", [-1, 3], fitted["animals"].predict_proba(X_animals)),
            "label": ("BYTES", [-1], fitted["animals"].predict(X_animals).tolist())}),
        "price": Case("price", _numeric_inputs(X_price), {
            "output": ("FP64", [-1], fitted["price"].predict(X_price))}),
        "cities": Case("cities", [
            ("city", "BYTES", np.array([s.encode() for s in cities["city"]], dtype=object)),
            ("x", "FP64", cities["x"].to_numpy()), ("n", "INT64", cities["n"].to_numpy(dtype=np.int64))], {
            "output": ("FP64", [-1], fitted["cities"].predict_proba(cities)[:, 1])}),
        "custom": Case("custom", _numeric_inputs(X_custom), {
            "output": ("FP64", [-1], np.asarray(local.predict(pd.DataFrame(X_custom, columns=COLS))))}),
    }
    if HAVE_XGBOOST:
        X_boost = _boost_frame(6, 3)[COLS].to_numpy()
        cases["boosted"] = Case("boosted", _numeric_inputs(X_boost), {
            "output": ("FP64", [-1], fitted["boosted"].predict_proba(X_boost)[:, 1])})
    # these rows exercise the python model's clip at both ends and its squashing between, and several classes
    scores = cases["custom"].outputs["output"][2]
    assert scores.min() == 1.0 and scores.max() == 99.0 and ((scores > 1.0) & (scores < 99.0)).sum() >= 3
    assert len(set(cases["animals"].outputs["label"][2])) >= 2

    port = free_port()
    proc = ServeProcess(root, *(a for n in names for a in ("--model", f"{n}@1")), "--grpc-port", str(port))
    try:
        yield Served(proc.wait_ready(), port, admin, cases)
    finally:
        proc.stop()


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, served: Served) -> Iterator[tuple[str, Any]]:
    if request.param == "http":
        c: Any = httpclient.InferenceServerClient(url=served.proc.url.removeprefix("http://"))
    else:
        c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{served.grpc_port}")
    yield request.param, c
    c.close()


@pytest.fixture(params=MODELS)
def case(request: pytest.FixtureRequest, served: Served) -> Case:
    if request.param == "boosted":
        need(HAVE_XGBOOST, "xgboost is not installed", "install modelmill's xgboost extra")
    return served.cases[request.param]


def _mod(kind: str) -> Any:
    return httpclient if kind == "http" else grpcclient


def _tensors(kind: str, case: Case) -> list[Any]:
    out = []
    for name, datatype, data in case.inputs:
        t = _mod(kind).InferInput(name, [len(data)], datatype)
        t.set_data_from_numpy(data)
        out.append(t)
    return out


def _meta(kind: str, client: Any, name: str) -> dict[str, Any]:
    meta = client.get_model_metadata(name)
    if kind == "grpc":  # a protobuf message: the same facts
        return {"name": meta.name, "versions": list(meta.versions),
                "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in meta.inputs],
                "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in meta.outputs]}
    return dict(meta)


def _config(kind: str, client: Any, name: str) -> dict[str, Any]:
    """The model configuration as (name, data type, dims) per input and output, and its backend."""
    if kind == "http":
        cfg = client.get_model_config(name)
        return {"name": cfg["name"], "backend": cfg.get("backend"), "max_batch_size": cfg["max_batch_size"],
                "versions": [int(v) for v in cfg["version_policy"]["specific"]["versions"]],
                "input": [(i["name"], i["data_type"], list(i["dims"])) for i in cfg["input"]],
                "output": [(o["name"], o["data_type"], list(o["dims"])) for o in cfg["output"]]}
    cfg = client.get_model_config(name).config
    dtype = grpcclient.model_config_pb2.DataType.Name
    return {"name": cfg.name, "backend": cfg.backend, "max_batch_size": cfg.max_batch_size,
            "versions": list(cfg.version_policy.specific.versions),
            "input": [(i.name, dtype(i.data_type), list(i.dims)) for i in cfg.input],
            "output": [(o.name, dtype(o.data_type), list(o.dims)) for o in cfg.output]}


def _stats(kind: str, client: Any) -> dict[tuple[str, str], dict[str, int]]:
    """Every model version's counters: (name, version) -> inference, execution and per-phase request counts."""
    phases = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    out: dict[tuple[str, str], dict[str, int]] = {}
    if kind == "http":
        for s in client.get_inference_statistics()["model_stats"]:
            out[(s["name"], s["version"])] = {"inference": s["inference_count"], "execution": s["execution_count"],
                                              **{p: s["inference_stats"][p]["count"] for p in phases}}
    else:
        for s in client.get_inference_statistics().model_stats:
            out[(s.name, s.version)] = {"inference": s.inference_count, "execution": s.execution_count,
                                        **{p: getattr(s.inference_stats, p).count for p in phases}}
    return out


def _index(kind: str, client: Any) -> dict[str, str]:
    if kind == "http":
        return {e["name"]: e["state"] for e in client.get_model_repository_index()}
    return {m.name: m.state for m in client.get_model_repository_index().models}


def _check_infer(kind: str, client: Any, case: Case) -> None:
    result = client.infer(case.name, _tensors(kind, case))
    for name, (datatype, _, expected) in case.outputs.items():
        got = result.as_numpy(name)
        assert got is not None, f"{case.name} answered no {name}"
        if datatype == "BYTES":
            assert [v.decode() if isinstance(v, bytes) else v for v in got.tolist()] == expected
        else:
            assert got.shape == np.shape(expected)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


TASKS = {"animals": "multiclass", "price": "regression", "cities": "binary", "boosted": "binary",
         "custom": "regression"}
_CONFIG_TYPE = {"FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}


def test_metadata(client: tuple[str, Any], case: Case) -> None:
    kind, c = client
    meta = _meta(kind, c, case.name)
    assert meta["name"] == case.name and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": n, "datatype": t, "shape": [-1]} for n, t, _ in case.inputs]
    assert meta["outputs"] == [{"name": n, "datatype": t, "shape": s} for n, (t, s, _) in case.outputs.items()]
    assert c.is_model_ready(case.name)
    if kind == "http":  # modelmill's own facts beside Triton's (the gRPC message has no field for them)
        assert meta["task"] == TASKS[case.name]
        assert meta.get("classes") == (["cat", "dog", "fish"] if case.name == "animals" else None)


def test_infer_equals_the_local_predict(client: tuple[str, Any], case: Case) -> None:
    kind, c = client
    _check_infer(kind, c, case)


def test_requested_outputs_only(client: tuple[str, Any], served: Served) -> None:
    kind, c = client
    case = served.cases["animals"]
    only = c.infer("animals", _tensors(kind, case), outputs=[_mod(kind).InferRequestedOutput("label")])
    assert only.as_numpy("output") is None
    assert [v.decode() for v in only.as_numpy("label").tolist()] == case.outputs["label"][2]


def test_config_names_the_signature(client: tuple[str, Any], case: Case) -> None:
    kind, c = client
    cfg = _config(kind, c, case.name)
    assert cfg["name"] == case.name and cfg["versions"] == [1] and cfg["max_batch_size"] > 0
    # Triton's dims leave out the batch dimension: one value per row for each input, [C] for C columns out
    assert cfg["input"] == [(n, _CONFIG_TYPE[t], [1]) for n, t, _ in case.inputs]
    assert cfg["output"] == [(n, _CONFIG_TYPE[t], s[1:] or [1]) for n, (t, s, _) in case.outputs.items()]
    assert cfg["backend"] == {"animals": "sklearn", "price": "sklearn", "cities": "sklearn", "boosted": "xgboost",
                              "custom": "python"}[case.name]


def test_statistics_count_exactly_the_requests_sent(client: tuple[str, Any], case: Case) -> None:
    kind, c = client
    before = _stats(kind, c)
    requests = 3
    for _ in range(requests):
        _check_infer(kind, c, case)
    after = _stats(kind, c)
    key = (case.name, "1")
    was = before.get(key, dict.fromkeys(after[key], 0))
    delta = {k: after[key][k] - was[k] for k in after[key]}
    assert delta == {"inference": requests * case.rows, "execution": requests, "success": requests, "fail": 0,
                     "queue": requests, "compute_input": requests, "compute_infer": requests,
                     "compute_output": requests}
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}


def test_repository_unload_and_load(client: tuple[str, Any], case: Case, served: Served) -> None:
    kind, c = client
    admin = {"authorization" if kind == "grpc" else "Authorization": f"Bearer {served.admin}"}
    index = _index(kind, c)
    assert set(index) == set(served.cases) and index[case.name] == "READY"
    c.unload_model(case.name, headers=admin)
    try:
        assert not c.is_model_ready(case.name)
        after = _index(kind, c)
        assert after[case.name] == "UNAVAILABLE"
        assert {n: s for n, s in after.items() if n != case.name} == {n: s for n, s in index.items()
                                                                      if n != case.name}
    finally:
        c.load_model(case.name, headers=admin)
    assert c.is_model_ready(case.name) and _index(kind, c)[case.name] == "READY"
    _check_infer(kind, c, case)  # loaded again, it answers as before
