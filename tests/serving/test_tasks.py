"""Tasks through serving: a multiclass model answers a probability per class and its predicted label (class
names from the signature, else the estimator's classes), a regressor its value, a multi-output model every
output; over OIP (JSON and binary) and the feature route, through the prediction cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.registry.flavors import flavor
from modelmill.registry.signature import Field, Signature
from modelmill.serving import ModelServer, ServerConfig, StaticSource, create_app

COLS = ["a", "b", "c"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 3))
    y = np.array(["cat", "dog", "fish"])[np.argmax(X + rng.normal(scale=0.3, size=X.shape), axis=1)]
    return X, y


def models() -> dict[str, Any]:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    X, y = _data()
    return {"animals": LogisticRegression(max_iter=500).fit(X, y),
            "coded": LogisticRegression(max_iter=500).fit(X, np.searchsorted(["cat", "dog", "fish"], y)),
            "price": LinearRegression().fit(X, X @ [1.0, -2.0, 0.5] + 3),
            "both": LinearRegression().fit(X, np.column_stack([X @ [1.0, 0, 0], X @ [0, 2.0, 1.0]]))}


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    return models()


@pytest.fixture
def client(fitted: dict[str, Any]) -> Iterator[TestClient]:
    fl = flavor("sklearn")
    loaded = []
    for name, est in fitted.items():
        outputs = [Field(c) for c in ("cat", "dog", "fish")] if name == "coded" else None
        sig = Signature(inputs=[Field(c) for c in COLS], **({"outputs": outputs} if outputs else {}))
        loaded.append(fl.load(fl.dump(est, sig), sig, name=name, version=1, sha256=""))
    source = StaticSource(loaded, aliases={f"{n}@production": 1 for n in fitted})
    server = ModelServer(source, config=ServerConfig(models=[f"{n}@production" for n in fitted],
                                                     log_predictions=False))
    with TestClient(create_app(server)) as c:
        yield c


def _body(X: np.ndarray, **more: Any) -> dict[str, Any]:
    return {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(X)], "data": X[:, i].tolist()}
                       for i, c in enumerate(COLS)], **more}


def test_multiclass_metadata_names_the_classes(client: TestClient) -> None:
    meta = client.get("/v2/models/animals").json()
    assert meta["task"] == "multiclass" and meta["classes"] == ["cat", "dog", "fish"]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1, 3]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    cfg = client.get("/v2/models/animals/config").json()
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg["output"]] == [("output", "TYPE_FP64", [3]),
                                                                               ("label", "TYPE_STRING", [1])]
    # classes fitted as 0, 1, 2 take their names from the signature's outputs (one field per class)
    assert client.get("/v2/models/coded").json()["classes"] == ["cat", "dog", "fish"]


def test_multiclass_answers_every_probability_and_the_label(client: TestClient, fitted: dict[str, Any]) -> None:
    X = np.random.default_rng(4).normal(size=(6, 3))
    for _ in range(2):  # the second answer comes from the prediction cache: same shape, same values
        r = client.post("/v2/models/animals/infer", json=_body(X))
        assert r.status_code == 200, r.text
        out, label = r.json()["outputs"]
        assert out["name"] == "output" and out["shape"] == [6, 3]
        np.testing.assert_allclose(np.array(out["data"]), fitted["animals"].predict_proba(X), rtol=1e-12)
        assert label == {"name": "label", "datatype": "BYTES", "shape": [6],
                         "data": fitted["animals"].predict(X).tolist()}
    assert len(set(label["data"])) > 1
    r = client.post("/v2/models/coded/infer", json=_body(X, outputs=[{"name": "label"}]))
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert r.json()["outputs"][0]["data"] == [["cat", "dog", "fish"][i] for i in fitted["coded"].predict(X)]


def test_multiclass_binary_outputs(client: TestClient, fitted: dict[str, Any]) -> None:
    X = np.random.default_rng(5).normal(size=(4, 3))
    r = client.post("/v2/models/animals/infer", json=_body(X, parameters={"binary_data_output": True}))
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    raw = r.content[n:]
    assert sizes[0] == 4 * 3 * 8 and sum(sizes) == len(raw)
    probs = np.frombuffer(raw[:sizes[0]], "<f8").reshape(4, 3)
    np.testing.assert_allclose(probs, fitted["animals"].predict_proba(X), rtol=1e-12)
    labels, pos, blob = [], 0, raw[sizes[0]:]
    while pos < len(blob):
        k = int.from_bytes(blob[pos:pos + 4], "little")
        labels.append(blob[pos + 4:pos + 4 + k].decode())
        pos += 4 + k
    assert labels == fitted["animals"].predict(X).tolist()


def test_regression_and_multi_output(client: TestClient, fitted: dict[str, Any]) -> None:
    X = np.random.default_rng(6).normal(size=(5, 3))
    meta = client.get("/v2/models/price").json()
    assert meta["task"] == "regression" and meta["outputs"] == [{"name": "output", "datatype": "FP64",
                                                                 "shape": [-1]}]
    r = client.post("/v2/models/price/infer", json=_body(X)).json()
    np.testing.assert_allclose(r["outputs"][0]["data"], fitted["price"].predict(X), rtol=1e-12)
    assert client.get("/v2/models/both").json()["task"] == "multi_output"
    for _ in range(2):  # through the cache too
        r = client.post("/v2/models/both/infer", json=_body(X)).json()
        assert r["outputs"][0]["shape"] == [5, 2]
        np.testing.assert_allclose(np.array(r["outputs"][0]["data"]), fitted["both"].predict(X), rtol=1e-12)
    r = client.post("/v2/models/price/infer", json=_body(X, outputs=[{"name": "label"}]))
    assert r.status_code == 400 and "outputs[0].name" in r.json()["error"]
    r = client.post("/v2/models/animals/infer", json=_body(X, outputs=["label"]))
    assert r.status_code == 400 and "outputs[0]" in r.json()["error"]


def test_feature_route_per_task(client: TestClient, fitted: dict[str, Any]) -> None:
    row = {"a": 0.3, "b": -1.2, "c": 2.0}
    x = np.array([[row[c] for c in COLS]])
    r = client.post("/v1/models/animals/predict", json={"entities": {}, "features": row}).json()
    assert r["prediction"] == fitted["animals"].predict(x)[0]
    assert r["probabilities"] == pytest.approx(dict(zip(["cat", "dog", "fish"],
                                                        fitted["animals"].predict_proba(x)[0], strict=True)))
    r = client.post("/v1/models/price/predict", json={"entities": {}, "features": row}).json()
    assert r["prediction"] == pytest.approx(fitted["price"].predict(x)[0], rel=1e-12)
    r = client.post("/v1/models/both/predict", json={"entities": {}, "features": row}).json()
    assert r["prediction"] == pytest.approx(fitted["both"].predict(x)[0].tolist(), rel=1e-12)
