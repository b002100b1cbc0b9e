"""Aliases move with an audit trail: who, when, why; the CLI shows the history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.errors import InputError, NotFoundError
from modelmill.registry import Field, Registry, Signature
from modelmill.store.tables import audit_log
from tests.registry.test_concurrency import Constant

SIG = Signature(inputs=[Field("x")])


def _three(registry: Registry) -> None:
    for i in range(3):
        registry.register("m", Constant(i), flavor="sklearn", signature=SIG)


def test_alias_moves_are_audited(registry: Registry) -> None:
    _three(registry)
    t0 = time.time()
    registry.set_alias("m", "production", 1, actor="ann", reason="first release")
    registry.set_alias("m", "challenger", 2, actor="bob", reason="new features")
    registry.set_alias("m", "production", 2, actor="ann", reason="won the A/B test")
    registry.set_alias("m", "my-team_pin", 3, actor="cy")
    registry.delete_alias("m", "challenger", actor="bob", reason="promoted")
    assert registry.aliases("m") == {"my-team_pin": 3, "production": 2}
    assert registry.resolve("m@production").aliases == ("production",)

    prod = registry.alias_history("m", "production")
    assert [(c.actor, c.version, c.previous, c.reason) for c in prod] == [
        ("ann", 1, None, "first release"), ("ann", 2, 1, "won the A/B test")]
    assert all(t0 <= c.at <= time.time() for c in prod)
    everything = registry.alias_history("m")
    assert [(c.alias, c.version) for c in everything] == [
        ("production", 1), ("challenger", 2), ("production", 2), ("my-team_pin", 3), ("challenger", None)]
    with registry.project.db.engine.connect() as conn:
        actions = conn.execute(sa.select(audit_log.c.action).where(audit_log.c.subject == "model:m")
                               .order_by(audit_log.c.id)).scalars().all()
    assert actions == ["model.register"] * 3 + ["alias.set"] * 4 + ["alias.delete"]


def test_alias_errors(registry: Registry) -> None:
    _three(registry)
    with pytest.raises(NotFoundError, match="versions 1 to 3"):
        registry.set_alias("m", "production", 9)
    with pytest.raises(InputError):
        registry.set_alias("m", "Prod!", 1)
    with pytest.raises(InputError):
        registry.set_alias("m", "7", 1)  # would read as a version number
    with pytest.raises(NotFoundError):
        registry.set_alias("nope", "production", 1)
    with pytest.raises(NotFoundError, match="nothing to delete"):
        registry.delete_alias("m", "canary")
    assert registry.alias_history("m") == []


def test_cli_alias_and_list(sqlite_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _three(sqlite_registry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELMILL_HOME", str(sqlite_registry.project.settings.home))
    runner = CliRunner()
    out = runner.invoke(app, ["models", "alias", "m", "canary", "3", "--reason", "10% traffic", "--actor", "dee",
                              "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["version"] == 3 and shown["history"][0]["actor"] == "dee"
    assert shown["history"][0]["reason"] == "10% traffic"
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert listed["models"] == [{**listed["models"][0], "name": "m", "latest_version": 3, "aliases": {"canary": 3}}]
    versions = json.loads(runner.invoke(app, ["models", "list", "m", "--json"]).stdout)["versions"]
    assert [v["aliases"] for v in versions] == [[], [], ["canary"]]
    loaded = json.loads(runner.invoke(app, ["models", "load", "m@canary", "--json"]).stdout)
    assert loaded["verified"] is True and loaded["version"] == 3
