"""Shadow variants: a shadow that has not answered yet holds up no primary answer, and its predictions reach the log.

An ordering, not a timing: the shadow model answers only once the test opens its gate, and the test opens it
only after every primary answer came back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelmill.registry import Registry
from modelmill.serving import RouteTable, Variant
from tests.serving.conftest import N_FEATURES, open_project_at, signature
from tests.serving.sleepy import GatedModel

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 300


def test_a_shadow_that_has_not_answered_holds_up_no_primary_answer_and_is_logged(project_dir: Path,
                                                                                 serve: Any) -> None:
    gate = project_dir / "shadow-may-answer"
    project = open_project_at(project_dir)
    try:
        reg = Registry(project)
        reg.register("clf", GatedModel(str(gate)), flavor="sklearn", signature=signature())  # version 3
        RouteTable(project).set("clf", [Variant("primary", 1, 1.0), Variant("gated", 3, 0, shadow=True)])
    finally:
        project.close()
    # the server process imports GatedModel from this repository's tests package
    proc = serve(project_dir, "--no-cache", env={"PYTHONPATH": str(REPO)})

    X = np.random.default_rng(9).normal(size=(1, N_FEATURES))
    body = {"inputs": [{"name": "input", "shape": [1, N_FEATURES], "datatype": "FP64", "data": X.tolist()}]}
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        for _ in range(REQUESTS):  # each mirrored to the shadow, which cannot answer yet
            r = client.post("/v2/models/clf/infer", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "1"
    gate.touch()  # every primary answer is in: now the shadow may answer the mirrored requests

    project = open_project_at(project_dir)
    try:
        deadline = time.monotonic() + 30
        shadow_rows = primary = 0
        while time.monotonic() < deadline:
            if project.offline.exists("predictions"):
                con = project.offline.connect(["predictions"])
                shadow_rows = con.execute("SELECT count(*) FROM predictions WHERE model = 'clf' AND "
                                          "variant = 'gated' AND version = 3 AND output = 0.5").fetchone()[0]
                primary = con.execute("SELECT count(*) FROM predictions WHERE model = 'clf' AND "
                                      "variant = 'primary' AND version = 1").fetchone()[0]
                con.close()
                if shadow_rows >= REQUESTS and primary >= REQUESTS:
                    break
            time.sleep(0.3)
        assert (shadow_rows, primary) == (REQUESTS, REQUESTS)
        con = project.offline.connect(["predictions"])
        pairs = con.execute("SELECT count(*) FROM predictions p JOIN predictions s USING (request_id) "
                            "WHERE p.variant = 'primary' AND s.variant = 'gated'").fetchone()[0]
        con.close()
        assert pairs == REQUESTS  # a shadow row carries the request id of the request it mirrors
    finally:
        project.close()
