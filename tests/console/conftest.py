"""Fixtures of the console's tests: a served experiment with a log written by the server's own writer."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from modelmill.console.app import create_console
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.project import Project
from modelmill.security import Authenticator, TokenStore
from tests.prediction_log import prediction_log

HOURS = 8
EMPTY = (3, 4)  # hours with no request: per window, no data


@pytest.fixture
def served(project: Project) -> Experiment:
    """Experiment ``ab`` on model ``m``: 8 hours of requests (none in hours 3 and 4), the treatment's
    outputs 0.05 higher; every request is stamped at its own time, after the experiment started."""
    store = Experiments(project)
    exp = store.create(Experiment(name="ab", model="m", primary_metric="output", min_sample_size=50,
                                  variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    assigner = exp.assigner()
    start = dt.datetime.fromtimestamp(exp.created_at, dt.UTC) + dt.timedelta(seconds=1)
    rng = np.random.default_rng(3)
    at = {}
    with prediction_log(project.offline, at=at) as log:
        for i in range(HOURS * 120):
            hour = i // 120
            if hour in EMPTY:
                continue
            user = f"user-{i}"
            v = assigner.assign(user)
            rid = f"r{i}"
            at[rid] = start + dt.timedelta(hours=hour, seconds=int(rng.integers(0, 3500)))
            out = float(np.clip(rng.normal(0.50 if v == "control" else 0.55, 0.1), 0, 1))
            log.append(rid, "m", 1 if v == "control" else 2, v, user, ("x",), np.array([[out]]), np.array([out]), 1.0)
    return exp


@contextlib.contextmanager
def console_client(project: Project) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The console over ``project`` at /ui, in process, with a read token's header."""
    secret = TokenStore(project).create("read", name="reader")[1]
    auth = Authenticator(TokenStore(project))
    auth.refresh()
    app = Starlette(routes=[Mount("/ui", app=create_console(project, auth))])
    with TestClient(app, base_url="http://127.0.0.1:8080") as c:
        yield c, {"Authorization": f"Bearer {secret}"}
