"""The foundation CLI run as a user runs it: a subprocess, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from modelmill.store import Database
from tests.conftest import REDIS_URL


def mm(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")} | env
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_commands(tmp_path: Path) -> None:
    out = mm(["--help"], tmp_path)
    assert out.returncode == 0
    for cmd in ("init", "doctor", "db"):
        assert cmd in out.stdout


def test_init_then_doctor_json_on_embedded_defaults(tmp_path: Path) -> None:
    init = mm(["init", "--json"], tmp_path)
    assert init.returncode == 0, init.stderr
    info = json.loads(init.stdout)
    status = json.loads(mm(["db", "status", "--json"], tmp_path).stdout)
    assert info["schema_version"] == status["expected"] and status["up_to_date"] is True
    assert (tmp_path / "modelmill.toml").read_text().startswith("# modelmill configuration")
    again = mm(["init"], tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
    doc = mm(["doctor", "--json"], tmp_path)
    assert doc.returncode == 0, doc.stdout
    report = json.loads(doc.stdout)  # exactly one JSON object, nothing else
    assert report["ok"] is True
    assert set(report["backends"]) == {"db", "online", "cache", "broker", "artifacts", "offline"}
    assert report["backends"]["db"]["schema_current"] is True


def test_doctor_reports_real_servers(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    out = mm(["doctor", "--json"], tmp_path, MODELMILL_DB=pg_url, MODELMILL_ONLINE=redis_url)
    assert out.returncode == 0, out.stdout
    backends = json.loads(out.stdout)["backends"]
    assert backends["db"]["reachable"] and backends["online"]["reachable"]
    assert backends["db"]["latency_ms"] > 0 and backends["online"]["url"] == REDIS_URL


def test_doctor_names_unreachable_redis_and_exits_nonzero(tmp_path: Path) -> None:
    out = mm(["doctor", "--json"], tmp_path, MODELMILL_ONLINE="redis://127.0.0.1:1/0")
    assert out.returncode == 1
    online = json.loads(out.stdout)["backends"]["online"]
    assert online["reachable"] is False and "refused" in online["reason"].lower()
    assert "Traceback" not in out.stderr


def test_doctor_masks_passwords(tmp_path: Path) -> None:
    out = mm(["doctor", "--json"], tmp_path, MODELMILL_DB="postgresql://postgres:hunter2@127.0.0.1:1/x")
    assert out.returncode == 1
    assert "hunter2" not in out.stdout and "***" in json.loads(out.stdout)["backends"]["db"]["url"]


def test_bad_setting_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    out = mm(["doctor"], tmp_path, MODELMILL_DB="mysql://x")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "'db'" in out.stderr and "postgresql://" in out.stderr
    as_json = mm(["doctor", "--json"], tmp_path, MODELMILL_DB="mysql://x")
    assert json.loads(as_json.stdout)["key"] == "db"


def test_db_commands_json(tmp_path: Path) -> None:
    heads = sorted(Database("sqlite://").code_heads())
    status = mm(["db", "status", "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    db = json.loads(status.stdout)["db"]
    assert db.endswith("modelmill.db")
    assert json.loads(status.stdout) == {"db": db, "current": [], "expected": heads, "up_to_date": False}
    upgrade = mm(["db", "upgrade", "--json"], tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert json.loads(upgrade.stdout) == {"db": db, "before": [], "after": heads}
    again = json.loads(mm(["db", "status", "--json"], tmp_path).stdout)
    assert again == {"db": db, "current": heads, "expected": heads, "up_to_date": True}


def test_db_upgrade_on_postgres(tmp_path: Path, pg_url: str) -> None:
    out = mm(["db", "upgrade", "--json"], tmp_path, MODELMILL_DB=pg_url)
    assert out.returncode == 0, out.stderr
    after = json.loads(out.stdout)["after"]
    assert after and after == json.loads(mm(["db", "status", "--json"], tmp_path, MODELMILL_DB=pg_url).stdout)["expected"]


# ---- a damaged metadata database: one clear error, never a traceback ---------------------------------------


def _project_with_a_model(folder: Path) -> Path:
    """A project holding one registered model and one token, as a user's would; returns its SQLite file."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from modelmill.config import Settings
    from modelmill.project import Project
    from modelmill.registry import Field, Registry, Signature
    from modelmill.security import TokenStore

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    settings = Settings.defaults(home=folder / ".modelmill")
    with Project(settings) as project:
        Registry(project).register("m", model, flavor="sklearn", actor="test",
                                   signature=Signature(inputs=[Field("a"), Field("b")],
                                                       outputs=[Field("probability")]))
        TokenStore(project).create("read", name="ci", actor="test")
    path = settings.home / "modelmill.db"
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: the file alone is the database
    return path


def _sql(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


DAMAGE = {
    # name: (how to damage the file, the words the error must contain)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:5000]), "malformed"),
    "future_revision": (lambda p: _sql(p, "UPDATE alembic_version SET version_num = 'zz_9999_newer' "
                                          "WHERE version_num LIKE 'security_%'"), "zz_9999_newer"),
    "dropped_table": (lambda p: _sql(p, "DROP TABLE model_aliases"), "model_aliases"),
    "non_json_signature": (lambda p: _sql(p, "UPDATE model_versions SET signature = 'not json{'"), "not JSON"),
    "zero_length": (lambda p: p.write_bytes(b""), "zero-length"),
}


# One damage in make test, every one in .ci/run (each is several CLI processes, ~6 s).
@pytest.mark.parametrize("case", [c if c == "zero_length" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(DAMAGE)])
def test_a_damaged_database_is_one_clear_error(tmp_path: Path, case: str) -> None:
    damage, words = DAMAGE[case]
    path = _project_with_a_model(tmp_path)
    damage(path)
    size = path.stat().st_size
    # A stored value that is not JSON breaks only what reads it: the tokens have none.
    commands = [["models", "list"]] + ([] if case == "non_json_signature" else [["token", "list"]])
    for command in commands:
        out = mm([*command, "--json"], tmp_path)
        assert out.returncode == 1, (command, out.stdout, out.stderr)
        assert out.stderr == "", out.stderr
        error = json.loads(out.stdout)  # exactly one JSON object
        assert error["type"] == "StoreError" and words in error["error"], error
    human = mm(["models", "show", "m@1"], tmp_path)
    assert human.returncode == 1 and human.stdout == "" and "Traceback" not in human.stderr
    assert human.stderr.startswith("error: ") and words in human.stderr, human.stderr
    assert path.stat().st_size == size  # nothing re-created or migrated over the damage
    doctor = mm(["doctor", "--json"], tmp_path)
    assert doctor.returncode == 1, doctor.stdout
    report = json.loads(doctor.stdout)
    db = report["backends"]["db"]
    assert report["ok"] is False and db["ok"] is False, db
    assert words in db["reason"] + " ".join(db["problems"]), db
    assert all(b["ok"] for name, b in report["backends"].items() if name != "db")


def test_doctor_names_a_bad_json_value_by_table_and_column(tmp_path: Path) -> None:
    path = _project_with_a_model(tmp_path)
    _sql(path, "UPDATE model_versions SET signature = 'not json{'")
    db = json.loads(mm(["doctor", "--json"], tmp_path).stdout)["backends"]["db"]
    assert db["reachable"] is True and db["problems"] == ["table model_versions: 1 value of signature not JSON"]
    text = mm(["doctor"], tmp_path)
    assert text.returncode == 1 and "damaged" in text.stdout and "Traceback" not in text.stderr


def test_a_new_project_still_starts_without_a_database_file(tmp_path: Path) -> None:
    """Only a missing file means "new project"; it is created whole, never left zero-length."""
    out = mm(["models", "list", "--json"], tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout) == {"models": []}, out.stderr
    assert (tmp_path / ".modelmill" / "modelmill.db").stat().st_size > 0


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_a_schema_revision_from_the_future_on_postgres(tmp_path: Path, pg_url: str) -> None:
    assert mm(["db", "upgrade", "--json"], tmp_path, MODELMILL_DB=pg_url).returncode == 0
    import sqlalchemy as sa

    from modelmill.config import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(pg_url))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zz_9999_newer' "
                             "WHERE version_num LIKE 'security_%'"))
    engine.dispose()
    for command in (["models", "list", "--json"], ["token", "list", "--json"], ["db", "upgrade", "--json"]):
        out = mm(command, tmp_path, MODELMILL_DB=pg_url)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        error = json.loads(out.stdout)
        assert error["type"] == "StoreError" and error["revisions"] == ["zz_9999_newer"], error
    doctor = json.loads(mm(["doctor", "--json"], tmp_path, MODELMILL_DB=pg_url).stdout)
    assert doctor["ok"] is False and "zz_9999_newer" in doctor["backends"]["db"]["problems"][0]


# ---- text is printed as written: no Rich markup in help or errors ------------------------------------------


def test_help_keeps_bracketed_text(tmp_path: Path) -> None:
    out = mm(["monitor", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "default [monitoring] interval" in " ".join(out.stdout.split())


def test_error_keeps_bracketed_text(tmp_path: Path) -> None:
    out = mm(["pipeline", "run", "no_such_pipeline"], tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "list its module in modelmill.toml [training] pipelines" in out.stderr, out.stderr


def test_table_cells_keep_bracketed_text(tmp_path: Path) -> None:
    _project_with_a_model(tmp_path)
    assert mm(["models", "alias", "m", "production", "1", "--reason", "[urgent] hotfix"], tmp_path).returncode == 0
    out = mm(["models", "alias", "m", "production"], tmp_path)
    assert out.returncode == 0 and "[urgent] hotfix" in out.stdout, out.stdout


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    import modelmill

    out = mm(["--version"], tmp_path)
    assert out.returncode == 0 and out.stdout == f"modelmill {modelmill.__version__}\n"
    assert modelmill.__version__ == version("modelmill")  # the installed distribution says the same


def test_serve_in_a_fresh_home_says_that_nothing_is_served_and_how_to_name_a_model(tmp_path: Path) -> None:
    out = mm(["serve", "--port", "1"], tmp_path)  # port 1: were it to start listening, it could not
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    message = " ".join(out.stderr.split())
    assert "nothing to serve" in message and "modelmill serve NAME@ALIAS" in message
    assert "modelmill models alias NAME production VERSION" in message
    # A registered model without a production alias is named in the advice.
    _project_with_a_model(tmp_path)
    named = " ".join(mm(["serve"], tmp_path).stderr.split())
    assert "registered models (m) have no 'production' alias" in named and "modelmill serve m@ALIAS" in named


def test_serve_with_no_model_named_serves_every_model_with_a_production_alias(tmp_path: Path) -> None:
    import httpx

    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.registry import Registry
    from tests.serving.conftest import ServeProcess, make_project, signature, train_lr

    root = make_project(tmp_path / "proj")  # clf v1 and v2, production -> 1
    with Project(load_settings(cwd=root)) as project:
        registry = Registry(project)
        registry.register("risk", train_lr(2), flavor="sklearn", signature=signature())
        registry.set_alias("risk", "production", 1)
        registry.register("draft", train_lr(3), flavor="sklearn", signature=signature())  # no alias: not served
    proc = ServeProcess(root).wait_ready()
    try:
        for name, served in (("clf", True), ("risk", True), ("draft", False)):
            meta = httpx.get(f"{proc.url}/v2/models/{name}", timeout=5)
            assert (meta.status_code == 200) is served, (name, meta.text)
        assert httpx.get(f"{proc.url}/v2/models/clf/versions/1/ready", timeout=5).status_code == 200
    finally:
        proc.stop()
    assert "serving clf@production, risk@production" in proc.log.read_text()
