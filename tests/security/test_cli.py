"""``modelmill token`` as a user runs it, and ``modelmill serve`` enforcing the tokens it makes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.serving.conftest import N_FEATURES, infer_body, make_project
from tests.test_cli import mm


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


def test_serve_with_auth_required_from_the_environment(tmp_path: Path, serve: Any) -> None:
    root = make_project(tmp_path / "proj")
    secret = json.loads(mm(["token", "create", "--role", "predict", "--json"], root).stdout)["token"]
    proc = serve(root, "--model", "clf@production", env={"MODELMILL_SERVING_AUTH": "required"})
    body = infer_body(np.random.default_rng(0).normal(size=(1, N_FEATURES)))
    url = f"{proc.url}/v2/models/clf/infer"
    anonymous = httpx.post(url, json=body)
    assert anonymous.status_code == 401 and "token" in anonymous.json()["error"]
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert httpx.get(f"{proc.url}/metrics").status_code == 401
    assert httpx.get(f"{proc.url}/v2/health/ready").status_code == 200
    mm(["token", "revoke", secret.split("_")[1]], root)
    deadline = time.monotonic() + 10
    status = 200
    while time.monotonic() < deadline and status != 401:  # reload_interval_s = 0.25 in this project
        status = httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code
        time.sleep(0.1)
    assert status == 401
