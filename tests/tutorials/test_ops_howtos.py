"""The operations how-tos (docs/howto/autoscale.md, console.md), each run as written: CLI, HTTP, a real Prometheus.

Each page runs once in a temporary folder (a module-scoped fixture); the tests read what its commands wrote
and check it against the page's own data: the 300 requests the autoscale page sends, counted by a real
Prometheus scraping ``modelmill serve``, and the HPA's two queries (as prometheus-adapter renders them from
deploy/) answering numbers, the objective being the page's ``latency_slo_ms``; the console's overview, rollout
and error pages as a read and an admin token see them, a forged POST refused and a real one promoting. The
blocks shown but not run (docker, helm, kubectl) are checked for what can be checked without them: the files
they name exist and parse, and the flags they pass exist.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.monitoring.conftest import need_binary
from tests.serving.test_autoscale import hpa_queries
from tests.tutorials.runner import HOWTO, blocks, free_port, run_howto
from tests.tutorials.runner import read_json as _json

ROOT = Path(__file__).resolve().parents[2]
# each page trains one or two models and starts servers (1 to 5 min on a shared machine): .ci/run runs them
pytestmark = pytest.mark.slow


def _text(name: str, w: Path) -> str:
    return (w / name).read_text()


def _value(answer: dict[str, object]) -> float:
    """The one number of a Prometheus instant query's answer."""
    data = answer["data"]
    assert isinstance(data, dict)
    [series] = data["result"]
    return float(series["value"][1])


# --- autoscale.md --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def autoscale(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_binary("prometheus", "install it with scripts/install-prometheus.sh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROM_PORT", str(free_port()))
        return run_howto("autoscale.md", tmp_path_factory.mktemp("autoscale"), timeout=600)


def test_a_real_prometheus_counts_the_pages_requests_and_answers_both_hpa_queries(autoscale: Path) -> None:
    w = autoscale
    assert _json(w, "train.json")["model_version"] == "churn@1"
    assert _value(_json(w, "total.json")) == 300  # every request of the page's loop, counted once
    assert _value(_json(w, "slo.json")) == 0.05  # latency_slo_ms = 50 in the page's modelmill.toml
    ratio = _value(_json(w, "ratio.json"))
    assert 0 < ratio < 20, ratio  # a p95 under a second for a 20-tree model on loopback
    # rate(...[2m]) from the first request to the 300th: at most 299 over 120 s, with Prometheus' extrapolation at the edges
    rps = _value(_json(w, "rps.json"))
    assert 0 < rps <= 300 / 120 * 2, rps


def test_the_pages_queries_are_the_ones_the_adapter_renders_for_the_hpas_metrics(autoscale: Path) -> None:
    rendered = {name: q for name, _, q in hpa_queries()}  # asserts exactly one adapter rule per HPA metric
    assert set(rendered) == {"modelmill_requests_per_second", "modelmill_latency_p95_slo_ratio"}

    def norm(q: str) -> str:
        return " ".join(q.split())

    assert norm(_text("p95_slo_ratio.promql", autoscale)) == norm(rendered["modelmill_latency_p95_slo_ratio"])
    assert norm(_text("requests_per_second.promql", autoscale)) == norm(rendered["modelmill_requests_per_second"])
    page = (HOWTO / "autoscale.md").read_text()
    assert all(f"`{name}`" in page for name in rendered)


def test_the_files_and_flags_the_shown_only_blocks_name_exist_and_parse() -> None:
    shown = "\n".join(b.body for b in blocks(HOWTO / "autoscale.md") if b.lang == "console")
    assert "docker build" in shown and "helm install" in shown and "kubectl apply -f deploy/" in shown
    named = set(re.findall(r"\b(deploy/[\w./-]+\.yaml)\b", shown))
    assert named == {"deploy/prometheus-adapter/values.yaml"}
    adapter = yaml.safe_load((ROOT / "deploy/prometheus-adapter/values.yaml").read_text())
    assert {"custom", "external"} <= set(adapter["rules"])
    # kubectl apply -f deploy/: every manifest parses and is a Kubernetes object
    manifests = [d for p in sorted((ROOT / "deploy").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert {m["kind"] for m in manifests} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert all(m.get("apiVersion") and m["metadata"].get("name") for m in manifests)
    # docker build .: the Dockerfile, its install step (valid shell) and the build argument the page names
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/docker/install.sh" in dockerfile and "ARG EXTRAS=serving,redis,postgres" in dockerfile
    assert "--build-arg EXTRAS=" in (HOWTO / "autoscale.md").read_text()
    bash = shutil.which("bash") or "/bin/bash"
    subprocess.run([bash, "-n", str(ROOT / "deploy/docker/install.sh")], check=True)
    # docker run ... serve --host 0.0.0.0 --port 8080 --model flights@production: serve takes those flags
    flags = set(re.findall(r"(?<=\s)--[a-z-]+", shown.split(" serve", 1)[1]))
    assert flags == {"--host", "--port", "--model"}
    helped = subprocess.run([sys.executable, "-m", "modelmill", "serve", "--help"], capture_output=True, text=True,
                            check=True).stdout
    assert all(f in helped for f in flags)


# --- console.md ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UI_PORT", str(free_port()))
        return run_howto("console.md", tmp_path_factory.mktemp("console"), timeout=900)


def _models_table(page: str) -> dict[str, list[str]]:
    """The overview's Models table: each row's cells as text, by model name."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        rows[cells[0]] = cells
    return rows


def test_the_overview_lists_the_model_its_production_version_and_rollout(console: Path) -> None:
    w = console
    assert [_json(w, f"v{v}.json")["model_version"] for v in (1, 2)] == ["churn@1", "churn@2"]
    expected = ["churn", "v1", "v1, v2", "production→v1", "candidate (v2) 10%, stable (production) 90%", "v2 at 10"]
    assert _models_table(_text("overview.html", w)) == {"churn": expected}
    # modelmill ui serves the same console without models; it runs after the promotion, so it shows stage 100
    promoted = [*expected[:4], "candidate (v2) 100%, stable (production) shadow", "v2 at 100"]
    assert _models_table(_text("ui-overview.html", w)) == {"churn": promoted}


def test_a_read_token_sees_no_button_and_an_admin_both(console: Path) -> None:
    read, admin = _text("rollout-read.html", console), _text("rollout-admin.html", console)
    for page in (read, admin):
        assert "Rollout #1: v2" in page
    assert "<form method=\"post\"" not in read and 'name="csrf"' not in read
    assert "Promoting or rolling back needs an admin token." in read
    assert "Promote to the next stage" in admin and "Roll back to the baseline" in admin
    assert admin.count('name="csrf"') == 2


def test_a_post_without_the_csrf_token_is_refused_and_with_it_promotes(console: Path) -> None:
    w = console
    assert _text("forged.txt", w).strip() == "403"
    assert "CSRF token is missing or stale" in html.unescape(_text("forged.html", w))
    forged = _json(w, "after-forged.json")["rollout"]
    assert (forged["stage"], forged["stage_index"], forged["status"]) == ("10", 0, "running")  # nothing changed
    assert _text("promoted.txt", w).strip() == "303"
    promoted = _json(w, "after-promote.json")["rollout"]
    assert (promoted["stage"], promoted["stage_index"], promoted["status"]) == ("100", 1, "running")


def test_bad_input_is_a_400_page_naming_the_field(console: Path) -> None:
    w = console
    for name, field, raw in (("bad-window", "window", "zz"), ("bad-version", "version", "two")):
        assert _text(f"{name}.txt", w).strip() == "400", name
        page = html.unescape(_text(f"{name}.html", w))
        [error] = re.findall(r'<p class="error" role="alert">([^<]*)', page)
        assert error.startswith(f"{field}: ") and f"(got {raw})" in error, error
        assert "Traceback" not in page
    assert json.loads(_text("alice.json", w))["role"] == "read"
