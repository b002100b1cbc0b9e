"""The OpenAPI document matches the routes, and schemathesis finds no 5xx and no schema-breaking answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from starlette.routing import Match, Route

from modelmill.security import TokenStore
from modelmill.serving import FunctionModel, ModelServer, StaticSource, create_app
from modelmill.serving.openapi import openapi_document
from tests.serving.conftest import ServeProcess, make_project, open_project_at


def test_openapi_document_matches_the_routes_exactly() -> None:
    server = ModelServer(StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0])]))
    app = create_app(server)
    routes = {(r.path, m) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    doc = openapi_document()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path


@pytest.mark.parametrize("path", [
    "/v2/models/m/infer", "/v2/models/m/versions/3/infer", "/v1/models/m/predict", "/v2/models/versions/infer",
    "/v2/models/m/infer/", "/v2/models//infer", "/v2/models/m/versions//infer", "/v1/models/m/infer",
    "/v2/models/m/predict", "/v3/models/m/infer", "/v2/model/m/infer", "v2/models/m/infer", "/v2/models/m",
    "/v2/models/a b/versions/x/infer", "/v2/models/m/versions/3/ready", "//v2/models/m/infer", "/metrics",
])
def test_direct_dispatch_matches_what_starlette_would_route(path: str) -> None:
    server = ModelServer(StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0])]))
    app = create_app(server)
    assert app.direct
    endpoint, params = app._match(path)
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    routed = [(r.endpoint, child["path_params"]) for r in app.routes
              for match, child in [r.matches(scope)] if match is Match.FULL]
    expected = routed[0] if routed and routed[0][0].__name__ in ("infer", "predict") else (None, {})
    assert (endpoint, params) == expected


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[schemathesis.BaseSchema, str]]:
    root = make_project(tmp_path_factory.mktemp("schemathesis") / "proj",
                        "max_body_bytes = 65536\nmax_batch_rows = 256\n")
    project = open_project_at(root)
    try:
        _, secret = TokenStore(project).create("admin", name="schemathesis")  # the control plane needs one
    finally:
        project.close()
    proc = ServeProcess(root, "--model", "clf@production")
    try:
        proc.wait_ready()
        yield schemathesis.openapi.from_url(f"{proc.url}/openapi.json"), secret
    finally:
        proc.stop()


def test_api_conforms_to_its_schema(live_schema: tuple[schemathesis.BaseSchema, str]) -> None:
    # Driven by hand (schemathesis' pytest plugin does not load under this pytest): every operation,
    # generated cases, and its checks: not_a_server_error, status_code_conformance,
    # content_type_conformance, response_schema_conformance, ...
    schema, secret = live_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # schemathesis leaves out the operation that serves the schema it was loaded from
    documented = {f"{m.upper()} {p}" for p, ops in openapi_document()["paths"].items() for m in ops}
    assert labels == documented - {"GET /openapi.json"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case: schemathesis.Case) -> None:
            # A schema-valid body may still name tensors the model does not have (a 400 is right),
            # so "positive data acceptance" does not apply; every other check does.
            # The admin token reaches the control plane (routes, aliases) too; schemathesis' own
            # ignored_auth check sends each guarded call without it as well and wants a 401.
            case.call_and_validate(timeout=10, excluded_checks=[positive_data_acceptance],
                                   headers={"Authorization": f"Bearer {secret}"})

        check()
