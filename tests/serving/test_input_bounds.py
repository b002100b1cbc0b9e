"""Hostile input answers 400 with a JSON body naming the field: non-ASCII digits, versions past a database
integer, names with a trailing newline, unbounded request ids and JSON values their datatype cannot hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from modelmill.errors import InputError
from modelmill.experiments.experiment import Arm
from modelmill.features.definitions import _check_name
from modelmill.features.definitions import parse_ref as features_ref
from modelmill.ingest.schema import Field
from modelmill.ingest.source import stream_name
from modelmill.registry import MAX_VERSION, Registry, check_version, parse_ref
from modelmill.registry.aliases import check_alias
from modelmill.registry.versions import check_model_name
from modelmill.security import Authenticator, TokenStore
from modelmill.security.tokens import PREFIX, parse_token
from modelmill.serving import (
    FunctionModel,
    Limits,
    ModelServer,
    ServerConfig,
    StaticSource,
    build_server,
    create_app,
)
from modelmill.store.offline import check_table_name
from tests.serving.conftest import make_project, open_project_at, signature, train_lr

ROW = {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                  {"name": "b", "shape": [1], "datatype": "FP64", "data": [2]}]}


@pytest.fixture(params=["direct", "starlette"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """Both dispatch paths: predictions straight to their endpoint, and through Starlette (auth required)."""
    model = FunctionModel("sum", 3, ["a", "b"], lambda X: X.sum(axis=1))
    mode = "control" if request.param == "direct" else "required"
    server = ModelServer(StaticSource([model], aliases={"sum@production": 3}),
                         config=ServerConfig(models=["sum@production"], log_predictions=False, auth=mode,
                                             limits=Limits(max_id_chars=64)))
    app = create_app(server)
    assert app.direct is (mode == "control")
    headers = {}
    if mode == "required":
        store = _token_store()
        headers = {"Authorization": f"Bearer {store.create('admin')[1]}"}
        app = create_app(ModelServer(StaticSource([model], aliases={"sum@production": 3}), config=server.config),
                         auth=Authenticator(store, mode=mode))
    with TestClient(app, headers=headers) as c:
        yield c


_STORES: list[Any] = []


def _token_store() -> TokenStore:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bounds-")) / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n')
    project = open_project_at(root)
    _STORES.append(project)
    return TokenStore(project)


def _error(r: Any, status: int, field: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message: str = r.json()["error"]
    assert message.startswith(field), message
    return message


@pytest.mark.parametrize("version", ["\u00b2", "\u0663", "\uff13", "9" * 19, "0"])
@pytest.mark.parametrize("route", ["", "/ready", "/infer"])
def test_a_version_that_is_not_ascii_digits_in_range_is_a_400(client: TestClient, version: str, route: str) -> None:
    path = f"/v2/models/sum/versions/{version}{route}"
    r = client.post(path, json=ROW) if route == "/infer" else client.get(path)
    _error(r, 400, "version")


def test_an_arabic_indic_three_is_not_version_three(client: TestClient) -> None:
    assert client.get("/v2/models/sum/versions/3").status_code == 200
    _error(client.get("/v2/models/sum/versions/\u0663"), 400, "version")


@pytest.mark.parametrize("value", [b"\xb2", b"\xff", b"\xd9\xa3", b"12\xb2", b"-1", b"1" * 20])
def test_the_binary_header_length_must_be_ascii_digits(client: TestClient, value: bytes) -> None:
    r = client.post("/v2/models/sum/infer", json=ROW, headers={"Inference-Header-Content-Length": value})
    _error(r, 400, "inference-header-content-length")


def test_a_request_id_longer_than_the_limit_is_refused(client: TestClient) -> None:
    r = client.post("/v2/models/sum/infer", json={**ROW, "id": "x" * 64})
    assert r.status_code == 200 and r.json()["id"] == "x" * 64
    message = _error(client.post("/v2/models/sum/infer", json={**ROW, "id": "x" * 65}), 400, "id")
    assert "65 characters" in message and "limit is 64" in message


def test_the_default_id_limit_is_256_and_configurable() -> None:
    assert Limits().max_id_chars == 256
    assert ServerConfig.from_section({"max_id_chars": 32}).limits.max_id_chars == 32
    with pytest.raises(Exception, match="max_id_chars"):
        Limits(max_id_chars=0)


def _tensor(datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "a", "shape": [len(data)], "datatype": datatype, "data": data},
                       {"name": "b", "shape": [len(data)], "datatype": "FP64", "data": [0] * len(data)}]}


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", [1e300]), ("FP32", [-3.5e38]), ("FP16", [70000.0]), ("INT8", [1000]), ("INT8", [-129]),
    ("INT64", [1.5]), ("INT32", [2**31]), ("UINT8", [-1]), ("UINT8", [256]), ("UINT16", [0.5]),
    ("UINT64", [2**64]), ("INT64", [2**63]), ("INT64", [-(2**64)]), ("INT64", [9.3e18]),
    ("BOOL", [2]), ("BOOL", [0.5]), ("INT16", [[1], [1.25]]),
])
def test_json_data_must_fit_its_datatype(client: TestClient, datatype: str, data: list[Any]) -> None:
    body = _tensor(datatype, data)
    if isinstance(data[0], list):
        body["inputs"][0]["shape"] = [len(data), 1]
    message = _error(client.post("/v2/models/sum/infer", json=body), 400, "inputs[0].data")
    assert datatype in message


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", [3.4e38, -1.5]), ("FP16", [65504.0]), ("INT8", [-128, 127]), ("INT64", [2**63 - 1, -(2**63)]),
    ("UINT64", [2**64 - 1, 0]), ("UINT8", [255, 0.0]), ("BOOL", [True, False]), ("BOOL", [1, 0]),
    ("INT32", [7.0]),
])
def test_values_inside_their_datatype_are_accepted(client: TestClient, datatype: str, data: list[Any]) -> None:
    r = client.post("/v2/models/sum/infer", json=_tensor(datatype, data))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [float(v) for v in data]


# ---- the control plane and the registry ------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    project = open_project_at(make_project(tmp_path_factory.mktemp("bounds") / "proj"))
    store = TokenStore(project)
    headers = {"Authorization": f"Bearer {store.create('admin')[1]}"}
    config = ServerConfig(models=["clf@production"], reload_interval_s=60, log_predictions=False)
    app = create_app(build_server(project, config), auth=Authenticator(store))
    with TestClient(app, headers=headers) as c:
        yield c, project, headers
    project.close()


def _stored(project: Any) -> tuple[list[Any], list[Any]]:
    with project.db.engine.connect() as conn:
        routes = conn.execute(sa.text("SELECT model, variant, target FROM serving_routes")).all()
        aliases = conn.execute(sa.text("SELECT name, alias, version FROM model_aliases")).all()
    return routes, aliases


@pytest.mark.parametrize("version", ["\u00b2", "\u0663", 2**63, "9223372036854775808", 2**70, -1, "Prod"])
def test_a_route_with_a_version_out_of_range_is_a_400_and_nothing_is_stored(
        admin: tuple[TestClient, Any, dict[str, str]], version: Any) -> None:
    client, project, _ = admin
    before = _stored(project)
    r = client.put("/v1/routes/clf", json={"variants": [{"name": "a", "version": version}]})
    _error(r, 400, "variants[0]: variant a: version")
    assert _stored(project) == before


@pytest.mark.parametrize("version", ["\u00b2", 2**63, 2**70, 0, 1.0, "1"])
def test_an_alias_to_a_version_out_of_range_is_a_400_and_nothing_is_stored(
        admin: tuple[TestClient, Any, dict[str, str]], version: Any) -> None:
    client, project, _ = admin
    before = _stored(project)
    _error(client.put("/v1/models/clf/aliases/canary", json={"version": version}), 400, "version")
    assert _stored(project) == before


def test_the_registry_itself_refuses_versions_past_a_database_integer(
        admin: tuple[TestClient, Any, dict[str, str]]) -> None:
    _, project, _ = admin
    registry = Registry(project)
    for call in (lambda: registry.get("clf", 2**63), lambda: registry.set_alias("clf", "canary", 2**63),
                 lambda: registry.resolve("clf@9223372036854775808"), lambda: registry.resolve("clf@0")):
        with pytest.raises(InputError):
            call()
    assert registry.get("clf", 1).version == 1


def test_check_version_takes_ascii_digits_from_1_to_max() -> None:
    assert check_version("1") == 1 and check_version(MAX_VERSION) == MAX_VERSION
    assert parse_ref("clf@12") == ("clf", 12)
    for bad in ("\u00b2", "\u0663", "1\n", " 1", "+1", "1_0", 0, -1, MAX_VERSION + 1, True, 1.0, None):
        with pytest.raises(InputError):
            check_version(bad)


# ---- name patterns are full matches ----------------------------------------------------------------


def test_an_alias_with_a_trailing_newline_is_refused_over_http(admin: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, project, _ = admin
    before = _stored(project)
    r = client.put("/v1/models/clf/aliases/production%0A", json={"version": 2})
    _error(r, 400, "alias")
    assert _stored(project) == before


@pytest.mark.parametrize("check", [check_model_name, check_alias])
def test_registry_names_with_a_trailing_newline_are_refused(check: Any) -> None:
    check("production")
    with pytest.raises(InputError):
        check("production\n")


def test_a_model_named_with_a_trailing_newline_is_not_registered(tmp_path: Path) -> None:
    project = open_project_at(make_project(tmp_path / "proj"))
    try:
        with pytest.raises(InputError, match="name"):
            Registry(project).register("evil\n", train_lr(0), flavor="sklearn", signature=signature())
        assert [m.name for m in Registry(project).models()] == ["clf"]
    finally:
        project.close()


def test_a_token_named_with_a_trailing_newline_is_not_stored() -> None:
    store = _token_store()
    with pytest.raises(InputError, match="name"):
        store.create("admin", name="ops\n")
    assert store.list() == []
    token, secret = store.create("read", name="ops")
    assert parse_token(secret) == token.id
    assert parse_token(f"{PREFIX}{token.id}\n_{secret.rsplit('_', 1)[1]}") is None


@pytest.mark.parametrize("check", [
    lambda n: _check_name("view", n), lambda n: features_ref(f"{n}:temp"), stream_name, check_table_name,
    lambda n: Field(n, "float"), lambda n: Arm(n, 1.0),
])
def test_every_other_name_check_is_a_full_match(check: Any) -> None:
    check("name")
    with pytest.raises(InputError):
        check("name\n")


def teardown_module() -> None:
    for project in _STORES:
        project.close()
