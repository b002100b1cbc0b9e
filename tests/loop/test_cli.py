"""``modelmill loop --once`` and ``modelmill loop status`` as a user runs them: a subprocess, one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelmill.config import load_settings
from modelmill.project import Project
from tests.loop import pipelines
from tests.loop.helpers import log_traffic
from tests.loop.test_config import mm

TOML = '''\
[models.clicks]
feature_service = "clicks_features"

[models.clicks.pipeline]
function = "tests.loop.pipelines:RETRAIN"
params = { seed = 1, flip = false }

[models.clicks.gate]
label = "clicked"
min = { auc = 0.6 }
max_regression = { auc = 0.05 }

[models.clicks.rules.error_rate]
max_rate = 0.1
min_requests = 10
window = "1h"

[models.clicks.rollout]
plan = ["shadow", 100]
min_requests = 50
'''


@pytest.mark.slow  # over 5 s (make test alone stays under 10 min; .ci/run runs it)
def test_one_round_then_the_status(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text(TOML)
    with Project(load_settings(cwd=tmp_path, env={})) as project:
        pipelines.first_version(project)
        log_traffic(project)

    before = mm(["loop", "status", "--json"], tmp_path)
    assert before.returncode == 0, before.stderr
    idle = json.loads(before.stdout)
    assert idle["leader"] is None and idle["lease"] is None
    assert idle["models"]["clicks"]["production"] == 1 and idle["models"]["clicks"]["rollout"] is None

    out = mm(["loop", "--once", "--json", "--holder", "cli-1"], tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rounds"] == 1 and result["last_round"]["leader"] is True and result["errors"] == []
    decision = result["last_round"]["models"]["clicks"]["decisions"][0]
    assert (decision["status"], decision["version"]) == ("rolling_out", 2)

    after = json.loads(mm(["loop", "status", "--json"], tmp_path).stdout)
    assert after["leader"] is None  # --once gave the lease back when it ended
    assert after["lease"]["holder"] == "cli-1" and after["last_round_at"] is not None
    m = after["models"]["clicks"]
    assert m["feature_service_version"] is None  # named, not applied in this project
    assert set(m) == {"feature_service", "feature_service_version", "pipeline", "rules", "latest_version", "production", "aliases", "rollout",
                      "alerts", "last_trigger", "last_decision", "last_round"}
    assert (m["latest_version"], m["production"], m["rollout"]["candidate"], m["rollout"]["stage"]) == (
        2, 1, 2, "shadow")
    assert [a["rule"] for a in m["alerts"]] == ["clicks.error_rate"]
    assert m["last_trigger"]["pipeline_run_id"] == m["last_decision"]["pipeline_run_id"]

    text = mm(["loop", "status"], tmp_path)
    assert text.returncode == 0 and "leader: (none)" in text.stdout and "clicks" in text.stdout


def test_a_failing_phase_makes_the_exit_status_1(tmp_path: Path) -> None:
    # A prediction log that cannot be read (its files overwritten): the monitor phase fails, the round says so.
    (tmp_path / "modelmill.toml").write_text(TOML)
    with Project(load_settings(cwd=tmp_path, env={})) as project:
        pipelines.first_version(project)
        log_traffic(project)
        offline = Path(project.settings.offline)
    for part in offline.joinpath("predictions").rglob("*.parquet"):
        part.write_bytes(b"not parquet")
    out = mm(["loop", "--once", "--json"], tmp_path)
    assert out.returncode == 1, out.stdout
    result = json.loads(out.stdout)
    assert result["errors"] and result["errors"][0].startswith("clicks: monitor: ")
