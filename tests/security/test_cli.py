"""``modelmill token`` as a user runs it, and ``modelmill serve`` enforcing the tokens it makes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelmill.registry import Registry
from tests.serving.conftest import N_FEATURES, infer_body, make_project, open_project_at
from tests.test_cli import mm


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_create_list_revoke_json(tmp_path: Path) -> None:
    made = mm(["token", "create", "--role", "admin", "--name", "ci", "--json"], tmp_path)
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["role"] == "admin" and doc["name"] == "ci" and doc["token"].startswith("mmt_")
    listed = json.loads(mm(["token", "list", "--json"], tmp_path).stdout)
    assert [(t["id"], t["name"], t["revoked"]) for t in listed["tokens"]] == [(doc["id"], "ci", False)]
    assert doc["token"] not in json.dumps(listed)  # the secret is shown once, at creation only
    revoked = json.loads(mm(["token", "revoke", "ci", "--json"], tmp_path).stdout)
    assert revoked["revoked"] is True and revoked["id"] == doc["id"]
    assert json.loads(mm(["token", "list", "--active", "--json"], tmp_path).stdout) == {"tokens": []}
    human = mm(["token", "create", "--role", "read"], tmp_path)
    assert human.returncode == 0 and "mmt_" in human.stdout and "not shown again" in human.stderr


def test_bad_role_and_unknown_token_are_clear_errors(tmp_path: Path) -> None:
    bad = mm(["token", "create", "--role", "root", "--json"], tmp_path)
    assert bad.returncode == 2 and "role" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr
    missing = mm(["token", "revoke", "nope"], tmp_path)
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    serve = mm(["serve", "--auth", "sometimes"], tmp_path)
    assert serve.returncode == 2 and "--auth" in serve.stderr


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_serve_with_auth_required_from_the_environment(tmp_path: Path, serve: Any) -> None:
    root = make_project(tmp_path / "proj")
    secret = json.loads(mm(["token", "create", "--role", "predict", "--json"], root).stdout)["token"]
    probe = json.loads(mm(["token", "create", "--role", "predict", "--json"], root).stdout)["token"]
    proc = serve(root, "--model", "clf@production", env={"MODELMILL_SERVING_AUTH": "required"})
    body = infer_body(np.random.default_rng(0).normal(size=(1, N_FEATURES)))
    url = f"{proc.url}/v2/models/clf/infer"
    anonymous = httpx.post(url, json=body)
    assert anonymous.status_code == 401 and "token" in anonymous.json()["error"]
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert httpx.get(f"{proc.url}/metrics").status_code == 401
    assert httpx.get(f"{proc.url}/v2/health/ready").status_code == 200
    assert mm(["token", "revoke", secret.split("_")[1]], root).returncode == 0
    # The server's reload reads the tokens, then the routes and aliases. A reload that shows an alias moved after
    # the revocation may have read the tokens just before it; the reload after that one cannot have. So: move the
    # alias twice, and by the time the second move is served the revoked token must be refused: at the latest by
    # the first reload to start after the revocation, counted in reloads, not in seconds.
    for version in (2, 1):
        _move_production(root, version)
        _wait_for_version(url, body, probe, str(version))
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {probe}"}).status_code == 200


def _move_production(root: Path, version: int) -> None:
    project = open_project_at(root)
    try:
        Registry(project).set_alias("clf", "production", version)
    finally:
        project.close()


def _wait_for_version(url: str, body: Any, secret: str, version: str) -> None:
    """Until the server answers with ``version``: a reload that began after the alias moved has finished."""
    deadline = time.monotonic() + 60  # only a guard against a hang; the test's claim is the order of events
    while time.monotonic() < deadline:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        if r.json()["model_version"] == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server never served version {version}")
