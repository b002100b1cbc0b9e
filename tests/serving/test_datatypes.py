"""OIP datatypes: every numeric datatype enforced on JSON data, and BYTES (string) inputs reaching a real
scikit-learn pipeline (a OneHotEncoder on a string column beside numeric ones), over OIP and the feature route."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.registry.flavors import categories, flavor
from modelmill.registry.signature import infer_signature
from modelmill.serving import FunctionModel, ModelServer, ServerConfig, StaticSource, create_app

CITIES = ["paris", "rome", "tokyo"]


def _frame(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({"city": rng.choice(CITIES, size=n), "x": rng.normal(size=n),
                         "n": rng.integers(0, 5, size=n)})


def pipeline() -> Any:
    """Logistic regression over one-hot cities and two numbers, fitted on a mixed DataFrame."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    df = _frame(300, 0)
    y = ((df["city"] == "rome") ^ (df["x"] > 0.3)).astype(int)
    pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                             ("num", "passthrough", ["x", "n"])])
    return Pipeline([("pre", pre), ("lr", LogisticRegression())]).fit(df, y)


@pytest.fixture(scope="module")
def model() -> Any:
    return pipeline()


@pytest.fixture
def client(model: Any) -> Iterator[TestClient]:
    sig = infer_signature(_frame(3, 1))
    fl = flavor("sklearn")
    loaded = fl.load(fl.dump(model, sig), sig, name="cities", version=1, sha256="")
    numeric = FunctionModel("num", 1, ["a"], lambda X: X[:, 0])
    source = StaticSource([loaded, numeric], aliases={"cities@production": 1, "num@production": 1})
    server = ModelServer(source, config=ServerConfig(models=["cities@production", "num@production"],
                                                     log_predictions=False))
    with TestClient(create_app(server)) as c:
        yield c


def _infer(client: TestClient, inputs: list[dict[str, Any]], model: str = "cities") -> Any:
    return client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})


def test_signature_string_columns_are_bytes_in_the_metadata(client: TestClient) -> None:
    meta = client.get("/v2/models/cities").json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("city", "BYTES"), ("x", "FP64"),
                                                                   ("n", "INT64")]


def test_json_strings_reach_the_pipeline_known_and_unknown(client: TestClient, model: Any) -> None:
    import pandas as pd

    cities = ["rome", "paris", "oslo", "tokyo", "rome"]  # oslo: not a fitted category (handle_unknown="ignore")
    x = [0.1, -1.0, 2.0, 0.5, 1.5]
    n = [0, 1, 2, 3, 4]
    r = _infer(client, [{"name": "x", "datatype": "FP64", "shape": [5], "data": x},
                        {"name": "city", "datatype": "BYTES", "shape": [5, 1], "data": [[c] for c in cities]},
                        {"name": "n", "datatype": "INT64", "shape": [5], "data": n}])
    assert r.status_code == 200, r.text
    expected = model.predict_proba(pd.DataFrame({"city": cities, "x": x, "n": n}))[:, 1]
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, rtol=1e-12)
    assert len(set(np.round(expected, 9))) == 5  # the cities (and so the decoding) matter


def test_binary_strings_length_prefixed(client: TestClient, model: Any) -> None:
    import pandas as pd

    cities = ["tokyo", "Zürich", ""]
    raw = b"".join(struct.pack("<I", len(c.encode())) + c.encode() for c in cities)
    x = np.array([0.2, 0.4, 0.6], dtype="<f8")
    n = np.array([1, 2, 3], dtype="<i4")
    header = ('{"inputs": [{"name": "city", "shape": [3], "datatype": "BYTES", "parameters": '
              f'{{"binary_data_size": {len(raw)}}}}}, {{"name": "x", "shape": [3], "datatype": "FP64", '
              '"parameters": {"binary_data_size": 24}}, {"name": "n", "shape": [3], "datatype": "INT32", '
              '"parameters": {"binary_data_size": 12}}]}').encode()
    r = client.post("/v2/models/cities/infer", content=header + raw + x.tobytes() + n.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    expected = model.predict_proba(pd.DataFrame({"city": cities, "x": x, "n": n.astype(np.int64)}))[:, 1]
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, rtol=1e-12)
    # a string whose declared length runs past its tensor's bytes is refused, naming the input
    short = header.replace(f'"binary_data_size": {len(raw)}'.encode(), f'"binary_data_size": {len(raw) - 1}'.encode())
    r = client.post("/v2/models/cities/infer", content=short + raw[:-1] + x.tobytes() + n.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(short))})
    assert r.status_code == 400 and "inputs[0].parameters.binary_data_size" in r.json()["error"], r.text


GOOD = {"x": {"name": "x", "datatype": "FP64", "shape": [1], "data": [0.5]},
        "n": {"name": "n", "datatype": "INT64", "shape": [1], "data": [1]},
        "city": {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["rome"]}}


@pytest.mark.parametrize(("bad", "field", "words"), [
    ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["0.5"]}, "inputs[0].datatype", "column x is float64"),
    ({"name": "city", "datatype": "FP64", "shape": [1], "data": [1.0]}, "inputs[0].datatype", "must be BYTES"),
    ({"name": "city", "datatype": "BYTES", "shape": [1], "data": [3]}, "inputs[0].data", "only strings"),
    ({"name": "city", "datatype": "BYTES", "shape": [2], "data": ["a"]}, "inputs[0].data", "needs 2"),
    ({"name": "city", "datatype": "BYTES", "shape": [1], "data": "rome"}, "inputs[0].data", "array of strings"),
    ({"name": "city", "datatype": "STRING", "shape": [1], "data": ["rome"]}, "inputs[0].datatype", "BYTES"),
])
def test_bytes_errors_name_the_input(client: TestClient, bad: dict[str, Any], field: str, words: str) -> None:
    rest = [v for k, v in GOOD.items() if k != bad["name"]]
    r = _infer(client, [bad, *rest])
    assert r.status_code == 400, r.text
    assert field in r.json()["error"] and words in r.json()["error"], r.json()


def test_a_single_matrix_cannot_carry_string_columns(client: TestClient) -> None:
    r = _infer(client, [{"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [[1, 2, 3]]}])
    assert r.status_code == 400 and "string columns" in r.json()["error"]
    r = _infer(client, [{"name": "input", "datatype": "BYTES", "shape": [1, 1], "data": [["a"]]}], model="num")
    assert r.status_code == 400 and "inputs[0].datatype" in r.json()["error"]


@pytest.mark.parametrize(("datatype", "value", "words"), [
    ("INT8", 128, "outside the range of INT8"), ("INT8", -129, "outside the range of INT8"),
    ("INT16", 40000, "INT16"), ("INT32", 2**31, "INT32"), ("INT64", 2**63, "INT64"),
    ("UINT8", -1, "UINT8"), ("UINT8", 256, "UINT8"), ("UINT16", 65536, "UINT16"), ("UINT32", 2**32, "UINT32"),
    ("UINT64", -1, "UINT64"), ("INT32", 1.5, "whole numbers"), ("UINT64", 0.25, "whole numbers"),
    ("BOOL", 2, "true/false"), ("FP32", 1e39, "FP32"), ("FP16", 70000.0, "FP16"), ("FP64", "1", "numbers"),
])
def test_every_numeric_datatype_is_enforced_on_json(client: TestClient, datatype: str, value: Any,
                                                    words: str) -> None:
    r = _infer(client, [{"name": "a", "datatype": datatype, "shape": [2], "data": [0, value]}], model="num")
    assert r.status_code == 400, r.text
    assert "inputs[0].data" in r.json()["error"] and words in r.json()["error"], r.json()


@pytest.mark.parametrize(("datatype", "value"), [
    ("INT8", -128), ("INT8", 127), ("UINT8", 255), ("INT64", 2**63 - 1), ("UINT64", 2**64 - 1), ("BOOL", True),
    ("FP32", 3.0e38), ("FP16", 65504.0), ("INT32", 7.0),
])
def test_values_at_the_edge_of_their_datatype_pass(client: TestClient, datatype: str, value: Any) -> None:
    r = _infer(client, [{"name": "a", "datatype": datatype, "shape": [1], "data": [value]}], model="num")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [float(value)]


def test_feature_route_takes_strings_for_string_columns(client: TestClient, model: Any) -> None:
    import pandas as pd

    r = client.post("/v1/models/cities/predict", json={"entities": {}, "features": {"city": "tokyo", "x": 0.7,
                                                                                     "n": 2}})
    assert r.status_code == 200, r.text
    expected = model.predict_proba(pd.DataFrame({"city": ["tokyo"], "x": [0.7], "n": [2]}))[0, 1]
    assert r.json()["prediction"] == pytest.approx(expected, rel=1e-12)
    r = client.post("/v1/models/cities/predict", json={"entities": {}, "features": {"city": 3, "x": 0.7, "n": 2}})
    assert r.status_code == 400 and "features.city" in r.json()["error"] and "string" in r.json()["error"]
    r = client.post("/v1/models/cities/predict", json={"entities": {}, "features": {"city": "a", "x": "b", "n": 2}})
    assert r.status_code == 400 and "features.x" in r.json()["error"]


def test_codes_are_the_fitted_categories_then_a_stable_hash(model: Any) -> None:
    from modelmill.serving.strings import StringCodes, hash_code

    sig = infer_signature(_frame(3, 1))
    assert categories(model, sig) == {"city": CITIES}
    codes = StringCodes(sig.input_names, categories(model, sig), string_columns=["city"])
    assert codes.encode(0, ["tokyo", "paris", "oslo"]).tolist() == [2.0, 0.0, hash_code("oslo")]
    assert hash_code("oslo") < 0 and hash_code("oslo") == float(int(hash_code("oslo")))  # exact in float64
    # another server (another worker) gives the same string the same code: the shared cache stays right
    other = StringCodes(sig.input_names, categories(model, sig), string_columns=["city"])
    assert other.encode(0, ["oslo"]).tolist() == [hash_code("oslo")]
    X = np.column_stack([codes.encode(0, ["oslo", "rome"]), [1.0, 2.0], [0.0, 1.0]])
    assert codes.decode(X)[:, 0].tolist() == ["oslo", "rome"]
    # a hashed string forgotten under the bound fails the model call (a 422), never decodes to another string
    tiny = StringCodes(["c"], {}, string_columns=["c"], max_strings=1)
    X = tiny.encode(0, ["a", "b"]).reshape(-1, 1)
    with pytest.raises(ValueError, match="no longer known"):
        tiny.decode(X)
