"""The foundation CLI run as a user runs it: a subprocess, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("args", [["db", "upgrade", "--json"], ["db", "status", "--json"]])
def test_db_commands_json(tmp_path: Path, args: list[str]) -> None:
    out = mm(args, tmp_path)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), dict)


def test_db_upgrade_on_postgres(tmp_path: Path, pg_url: str) -> None:
    out = mm(["db", "upgrade", "--json"], tmp_path, MODELMILL_DB=pg_url)
    assert out.returncode == 0, out.stderr
    after = json.loads(out.stdout)["after"]
    assert after and after == json.loads(mm(["db", "status", "--json"], tmp_path, MODELMILL_DB=pg_url).stdout)["expected"]
