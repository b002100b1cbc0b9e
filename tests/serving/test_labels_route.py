"""POST /v1/models/{name}/labels: who may post, how labels are counted and audited, what is refused, and the
loop closed over HTTP (client ids on predictions, labels by those ids, the one label join returns them)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from modelmill.project import Project
from modelmill.security import Authenticator, TokenStore
from modelmill.serving import ServerConfig, build_server, create_app
from modelmill.store.feedback import Feedback
from modelmill.store.tables import audit_log
from tests.serving.conftest import COLUMNS, infer_body, make_project, open_project_at

X = np.random.default_rng(11).normal(size=(6, len(COLUMNS)))
URL = "/v1/models/clf/labels"


class Served:
    def __init__(self, client: TestClient, project: Project, secrets: dict[str, str]) -> None:
        self.client, self.project, self.secrets = client, project, secrets

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def post(self, body: Any, role: str | None = "label", **kwargs: Any) -> Any:
        return self.client.post(URL, json=body, headers=self.headers(role) if role else None, **kwargs)

    def audited(self) -> list[Any]:
        with self.project.db.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log).where(audit_log.c.action == "labels.post")
                                     .order_by(audit_log.c.id)))

    def flush(self) -> None:
        self.client.app.state.server.predlog.flush()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = make_project(tmp_path / "proj", "max_labels = 5\n")
    project = open_project_at(root)
    store = TokenStore(project)
    secrets = {role: store.create(role, name=f"{role}-job")[1] for role in ("read", "predict", "label", "admin")}
    config = ServerConfig.from_section(project.settings.section("serving"), models=["clf@production"])
    app = create_app(build_server(project, config), auth=Authenticator(store, mode="control"))
    with TestClient(app) as client:
        yield Served(client, project, secrets)
    project.close()


def predict_oip(s: Served, i: int, rid: str) -> float:
    r = s.client.post("/v2/models/clf/infer", json={**infer_body(X[i:i + 1]), "id": rid})
    assert r.status_code == 200 and r.json()["id"] == rid, r.text
    return float(r.json()["outputs"][0]["data"][0])


def features(i: int) -> dict[str, Any]:
    return {"entities": {}, "features": {c: float(v) for c, v in zip(COLUMNS, X[i], strict=True)}}


def test_only_label_and_admin_tokens_may_post_labels_and_each_answered_post_is_audited(served: Served) -> None:
    body = {"labels": [{"id": "r1", "label": 1}]}
    no_token = served.post(body, role=None)
    assert no_token.status_code == 401 and "needs an API token" in no_token.json()["error"]
    for role in ("predict", "read"):
        r = served.post(body, role=role)
        assert r.status_code == 403 and "role label" in r.json()["error"], r.text
    assert served.audited() == []  # a refused POST is not audited (and stored nothing)
    assert not served.project.offline.exists("labels")
    assert served.post(body, role="label").json() == {"accepted": 0, "duplicates": 0, "unknown": 1}
    assert served.post({"labels": [{"id": "r1", "label": 0}]}, role="admin").status_code == 200
    rows = served.audited()
    assert [(r.actor, r.subject) for r in rows] == [("token:label-job", "clf"), ("token:admin-job", "clf")]
    assert rows[0].detail == {"labels": 1, "accepted": 0, "duplicates": 0, "unknown": 1}


def test_labels_are_counted_accepted_duplicate_or_unknown(served: Served) -> None:
    predict_oip(served, 0, "a")
    predict_oip(served, 1, "b")
    served.flush()
    first = {"labels": [{"id": "a", "label": 1, "ts": "2026-12-01T10:00:00Z"},
                        {"id": "b", "label": 0, "ts": "2026-12-01T10:00:00Z"},
                        {"id": "nobody-predicted-this", "label": 1}]}
    assert served.post(first).json() == {"accepted": 2, "duplicates": 0, "unknown": 1}
    again = {"labels": [{"id": "a", "label": 1, "ts": "2026-12-01T10:00:00Z"},  # stored already
                        {"id": "b", "label": 1, "ts": "2026-12-01T11:00:00Z"},  # a correction: newer ts
                        {"id": "b", "label": 1, "ts": "2026-12-01T11:00:00Z"}]}  # repeated in the batch
    assert served.post(again).json() == {"accepted": 1, "duplicates": 2, "unknown": 0}
    assert [r.detail for r in served.audited()][-1] == {"labels": 3, "accepted": 1, "duplicates": 2, "unknown": 0}


@pytest.mark.parametrize(("body", "field"), [
    ({"labels": [{"id": "a", "label": 1}, {"id": "b", "label": "yes"}]}, "labels[1].label"),
    ({"labels": [{"id": "a", "label": 1, "ts": "last tuesday"}]}, "labels[0].ts"),
    # found by schemathesis: a time pandas cannot hold was a 500 (OverflowError)
    ({"labels": [{"id": "a", "label": 1, "ts": "0056-11-17T07:00:05.3-12:03"}]}, "labels[0].ts"),
    ({"labels": [{"id": "a", "label": 1}, {"id": "b", "label": 1, "ts": 1e300}]}, "labels[1].ts"),
    ({"labels": [{"id": "", "label": 1}]}, "labels[0].id"),
    ({"labels": [{"label": 1}]}, "labels[0].id"),
    ({"labels": ["a"]}, "labels[0]"),
    ({"labels": []}, "labels"),
    ({"labels": {"id": "a"}}, "labels"),
    ({"label": [{"id": "a", "label": 1}]}, "label"),
    ([{"id": "a", "label": 1}], "body"),
])
def test_a_bad_label_is_a_400_naming_the_field_and_stores_nothing(served: Served, body: Any, field: str) -> None:
    r = served.post(body)
    assert r.status_code == 400 and r.json()["error"].startswith(f"{field}:"), r.text
    assert not served.project.offline.exists("labels") and served.audited() == []


def test_a_batch_over_max_labels_is_a_413_and_an_unknown_model_a_404(served: Served) -> None:
    over = {"labels": [{"id": f"r{i}", "label": 1} for i in range(6)]}  # max_labels = 5 in this project
    r = served.post(over)
    assert r.status_code == 413 and "labels" in r.json()["error"] and "5" in r.json()["error"], r.text
    assert served.post({"labels": over["labels"][:5]}).status_code == 200
    missing = served.client.post("/v1/models/nope/labels", json={"labels": [{"id": "a", "label": 1}]},
                                 headers=served.headers("label"))
    assert missing.status_code == 404 and "nope" in missing.json()["error"], missing.text
    big = served.post({"labels": [{"id": "x" * 5_000_000, "label": 1}]})  # over max_body_bytes (4 MiB)
    assert big.status_code == 413 and "body" in big.json()["error"]
    assert [r.detail["labels"] for r in served.audited()] == [5]


def test_a_registered_model_that_is_not_served_takes_labels(served: Served) -> None:
    from modelmill.registry import Registry
    from tests.serving.conftest import signature, train_lr

    Registry(served.project).register("other", train_lr(2), flavor="sklearn", signature=signature())
    r = served.client.post("/v1/models/other/labels", json={"labels": [{"id": "a", "label": 1}]},
                           headers=served.headers("label"))
    assert r.status_code == 200 and r.json() == {"accepted": 0, "duplicates": 0, "unknown": 1}, r.text


def test_the_feature_route_takes_a_bounded_client_id(served: Served) -> None:
    one = served.client.post("/v1/models/clf/predict", json={**features(0), "id": "order-7"})
    assert one.status_code == 200 and one.json()["request_id"] == "order-7", one.text
    many = served.client.post("/v1/models/clf/predict", json={"id": "cart-3", "instances": [
        {**features(1), "id": "own"}, features(2)]})
    assert [p["request_id"] for p in many.json()["predictions"]] == ["own", "cart-3/1"], many.text
    anonymous = served.client.post("/v1/models/clf/predict", json=features(3)).json()["request_id"]
    assert anonymous and anonymous not in ("order-7", "own")
    for body, field in [({**features(0), "id": 7}, "id"), ({**features(0), "id": "x" * 257}, "id"),
                        ({"instances": [{**features(0), "id": ["a"]}]}, "instances[0].id"),
                        ({"id": 1, "instances": [features(0)]}, "id")]:
        r = served.client.post("/v1/models/clf/predict", json=body)
        assert r.status_code == 400 and r.json()["error"].startswith(f"{field}:"), (body, r.text)


def test_predictions_with_client_ids_then_labels_over_http_are_what_the_label_join_returns(served: Served) -> None:
    outputs = {"oip-0": predict_oip(served, 0, "oip-0"), "oip-1": predict_oip(served, 1, "oip-1")}
    one = served.client.post("/v1/models/clf/predict", json={**features(2), "id": "feat-2"}).json()
    outputs[one["request_id"]] = one["prediction"]
    many = served.client.post("/v1/models/clf/predict", json={"instances": [
        {**features(3), "id": "feat-3"}, {**features(4), "id": "feat-4"}]}).json()
    outputs.update({p["request_id"]: p["prediction"] for p in many["predictions"]})
    predict_oip(served, 5, "never-labelled")
    served.flush()
    labels = {"oip-0": 1.0, "oip-1": 0.0, "feat-2": 1.0, "feat-4": 0.0}
    body = {"labels": [{"id": rid, "label": y} for rid, y in labels.items()]}
    assert served.post(body).json() == {"accepted": 4, "duplicates": 0, "unknown": 0}
    feedback = Feedback(served.project.offline)
    got = sorted((row["output"], row["label"]) for row in feedback.labelled(model="clf").to_pylist())
    want = sorted((outputs[rid], y) for rid, y in labels.items())
    assert len(got) == len(want) and all(math.isclose(g[0], w[0], rel_tol=0, abs_tol=1e-12) and g[1] == w[1]
                                         for g, w in zip(got, want, strict=True)), (got, want)
    outcomes = feedback.outcomes("clf", since=0)
    assert outcomes is not None
    assert dict(outcomes.dropna(subset=["label"])[["request_id", "label"]].itertuples(index=False)) == labels


def test_labels_must_fit_the_task_of_the_models_newest_version(served: Served) -> None:
    from modelmill.registry import Registry
    from tests.serving.conftest import signature, train_lr

    not_binary = served.post({"labels": [{"id": "a", "label": 1}, {"id": "b", "label": 2}]})
    assert not_binary.status_code == 400, not_binary.text
    assert not_binary.json()["error"].startswith("labels[1].label: must be 0 or 1 (or true/false): clf@2"), \
        not_binary.text
    assert served.post({"labels": [{"id": "a", "label": True}, {"id": "b", "label": 0.0}]}).status_code == 200
    registry = Registry(served.project)
    for name, tags in (("reg", {"task": "regression"}), ("odd", {"task": "ranking"})):
        registry.register(name, train_lr(2), flavor="sklearn", signature=signature(), tags=tags)
    url = "/v1/models/{}/labels"
    post = served.client.post
    ok = post(url.format("reg"), json={"labels": [{"id": "a", "label": 3.25}]}, headers=served.headers("label"))
    assert ok.status_code == 200 and ok.json()["unknown"] == 1, ok.text
    flag = post(url.format("reg"), json={"labels": [{"id": "a", "label": True}]}, headers=served.headers("label"))
    assert flag.status_code == 400 and flag.json()["error"].startswith("labels[0].label: must be a finite number")
    odd = post(url.format("odd"), json={"labels": [{"id": "a", "label": 1}]}, headers=served.headers("label"))
    assert odd.status_code == 409 and "records task 'ranking'" in odd.json()["error"], odd.text
    # NaN and infinities are not JSON (Python's json module writes them anyway): a 400, never stored
    for bad in ("NaN", "Infinity", "-Infinity"):
        r = served.client.post(URL, content='{"labels": [{"id": "a", "label": ' + bad + '}]}',
                               headers={**served.headers("label"), "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("body: is not valid JSON"), (bad, r.text)
    assert [r.detail["labels"] for r in served.audited()] == [2, 1]  # the refused POSTs are not audited


def test_a_repeated_client_id_is_answered_again_by_the_same_variant_and_its_label_labels_each_answer(
        served: Served) -> None:
    route = served.client.put("/v1/routes/clf", headers=served.headers("admin"), json={
        "variants": [{"name": "one", "version": 1, "weight": 1}, {"name": "two", "version": 2, "weight": 1}]})
    assert route.status_code == 200, route.text
    versions: dict[str, set[str]] = {}
    for i in range(12):
        for _ in range(2):  # each id twice: a client's retry
            r = served.client.post("/v2/models/clf/infer", json={**infer_body(X[i % 6:i % 6 + 1]), "id": f"o-{i}"})
            assert r.status_code == 200 and r.json()["id"] == f"o-{i}", r.text
            versions.setdefault(f"o-{i}", set()).add(r.json()["model_version"])
    assert all(len(v) == 1 for v in versions.values()), versions  # a repeat is answered by the same version
    # an empty id counts as none: the prediction gets one of the server's, on either route
    empty = served.client.post("/v1/models/clf/predict", json={**features(0), "id": ""})
    assert empty.status_code == 200 and empty.json()["request_id"], empty.text
    assert served.client.post("/v2/models/clf/infer", json={**infer_body(X[:1]), "id": ""}).status_code == 200
    assert set().union(*versions.values()) == {"1", "2"}  # and the ids are split between the two
    served.flush()
    assert served.post({"labels": [{"id": "o-0", "label": 1}]}).json() == {"accepted": 1, "duplicates": 0,
                                                                            "unknown": 0}
    feedback = Feedback(served.project.offline)
    logged = feedback.outcomes("clf", since=0)
    assert logged is not None and "" not in set(logged["request_id"]) and len(logged) == 26
    rows = feedback.labelled(model="clf").to_pylist()
    assert len(rows) == 2 and {r["label"] for r in rows} == {1.0}  # both answers under o-0 carry its label
    assert len({r["output"] for r in rows}) == 1 and len({r["version"] for r in rows}) == 1
