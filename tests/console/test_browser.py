"""The console in a real browser (Playwright driving Debian's Chromium) over a short demo's project.

Once per module: ``modelmill demo --months 3`` (January and February train, March is served; it ends
with the retrained v2 in a shadow rollout), then ``modelmill serve`` over that folder, which mounts the
console at ``/ui``. A quarter has no broken candidate (the demo plants one in its last month from
four months on), so the fixture runs the demo's own rollback drill: it rolls the shadow rollout
back, registers the demo's :class:`~modelmill.demo.faulty.FaultyModel` (it fails on long flights) as
v3, starts a 50% canary, sends flights through the server and lets the real controller judge it from
the prediction log until its error-rate guardrail rolls it back.

The screenshots of the main pages are written to docs/console/ (the README shows them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelmill import control
from modelmill.config import load_settings
from modelmill.control.rollouts import guardrails
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.rollout import RolloutController
from modelmill.security import TokenStore
from tests.conftest import need
from tests.serving.conftest import ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

MODEL = "flights_delay"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


@dataclass
class Demo:
    folder: Path
    url: str
    read: str
    admin: str
    broken: int
    drill: dict[str, Any]

    def project(self) -> Project:
        clear_cache()
        return Project(load_settings(cwd=self.folder))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}


def _plant_broken_candidate(project: Project, server: ServeProcess, admin: str) -> tuple[int, dict[str, Any]]:
    """The demo's rollback drill: a candidate failing on long flights, canaried and rolled back by its guardrails."""
    from modelmill.demo.faulty import FaultyModel

    ctl = RolloutController(project)
    if ctl.get(MODEL).active:
        control.rollback_rollout(project, MODEL, actor="console-test", reason="make way for the rollback drill")
    registry = Registry(project)
    production = registry.resolve(f"{MODEL}@production")
    columns = [f.name for f in production.signature.inputs]
    inner = registry.load(production).raw
    faulty = FaultyModel(inner, column=columns.index("distance"), limit=1000.0)
    # FaultyModel alone has no classes_, so the registry would not know it is a binary classifier and would
    # call the predict it lacks (the demo's own drill meets the same; reported): say what it wraps.
    faulty.classes_ = inner.classes_  # type: ignore[attr-defined]
    mv = registry.register(MODEL, faulty, flavor="sklearn", signature=production.signature,
                           lineage={**production.lineage, "note": "planted fault: fails on long flights"},
                           tags={"broken": "true"}, actor="console-test")
    control.start_rollout(project, MODEL, mv.version, actor="console-test", plan=[50, 100], min_requests=60,
                          stage_seconds=0.0,
                          # the error rate alone: the candidate's answers (short flights only) shift the
                          # output too, which the demo's own drill does not judge (max_output_shift = false)
                          guardrails=guardrails({"min_samples": 40}, off=["label_loss", "output_shift"]))
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for _ in range(100):  # the server applies the new route at its next reload
            route = client.get(f"/v1/routes/{MODEL}", headers=auth).json()
            if any(v["version"] == mv.version for v in route.get("variants", [])):
                break
            time.sleep(0.2)
        rng = np.random.default_rng(7)
        for i in range(400):
            row = rng.uniform(0.0, 1.0, len(columns))
            row[columns.index("distance")] = rng.uniform(200.0, 2500.0)
            body = {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(row[j])]}
                               for j, c in enumerate(columns)]}
            client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"x-routing-key": f"flight-{i}"})
    step = control.drive_rollout(project, MODEL, actor="rollout-controller", interval_s=1.0, max_seconds=120)
    return mv.version, step


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    need(shutil.which("chromium"), "chromium is not on PATH", "install it with scripts/install-chromium.sh")
    need(importlib.util.find_spec("playwright"), "playwright is not installed", "pip install -e '.[dev]'")
    folder = tmp_path_factory.mktemp("console-demo")
    run = subprocess.run([sys.executable, "-m", "modelmill", "demo", "--months", "3", "--json"], cwd=folder,
                         env=_env(), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    clear_cache()
    project = Project(load_settings(cwd=folder))
    store = TokenStore(project)
    read = store.create("read", name="console-read", actor="console-test")[1]
    admin = store.create("admin", name="console-admin", actor="console-test")[1]
    server = ServeProcess(folder, env={"MODELMILL_LOG_LEVEL": "WARNING"}).wait_ready(timeout=120)
    try:
        broken, drill = _plant_broken_candidate(project, server, admin)
        project.close()
        yield Demo(folder, server.url, read, admin, broken, drill)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(demo: Demo) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"),
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                           "--disable-component-update", "--no-first-run"])
        yield chromium
        chromium.close()


class Watched:
    """A browser page signed in with a token, recording console errors and every request it makes."""

    def __init__(self, browser: Any, demo: Demo, token: str | None) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.base = f"{demo.url}/ui"
        if token is not None:
            self.page.goto(f"{self.base}/")  # redirected to the sign-in page
            assert "/ui/signin" in self.page.url
            self.page.fill("#token", token)
            self.page.press("#token", "Enter")
            self.page.wait_for_url(f"{self.base}/")

    def goto(self, path: str) -> Any:
        response = self.page.goto(f"{self.base}/{path}")
        assert response is not None and response.status == 200, (path, response and response.status)
        return response

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def admin_page(browser: Any, demo: Demo) -> Iterator[Watched]:
    w = Watched(browser, demo, demo.admin)
    yield w
    w.close()


@pytest.fixture
def read_page(browser: Any, demo: Demo) -> Iterator[Watched]:
    w = Watched(browser, demo, demo.read)
    yield w
    w.close()


def test_overview_lists_the_model_and_its_versions(admin_page: Watched, demo: Demo) -> None:
    page = admin_page.page
    row = page.locator("table tr", has_text=MODEL).first
    text = row.inner_text()
    for v in (1, 2, demo.broken):
        assert re.search(rf"\bv{v}\b", text), text
    assert "production" in page.inner_text("main")
    admin_page.shot("overview")


def test_comparing_two_runs_shows_both_curves(admin_page: Watched) -> None:
    page = admin_page.page
    admin_page.goto("runs")
    boxes = page.locator("input[name=run]")
    assert boxes.count() >= 2
    ids = [boxes.nth(i).get_attribute("value") for i in range(2)]
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("#compare-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/runs/compare\?"))
    charts = page.locator("figure.chart")
    assert charts.count() >= 1
    curve = next(charts.nth(i) for i in range(charts.count()) if charts.nth(i).locator("polyline").count() >= 2)
    legend = curve.locator("ul.legend").inner_text()
    assert all(str(i)[:8] in legend for i in ids), legend
    assert "≠" in page.inner_text("main")  # at least one param differs (the training window's end)
    admin_page.shot("runs-compare")


def test_rollout_page_shows_the_rolled_back_broken_candidate(admin_page: Watched, demo: Demo) -> None:
    assert demo.drill["rollout"]["status"] == "rolled_back", demo.drill
    assert [b["check"] for b in demo.drill["breaches"]] == ["error_rate"], demo.drill
    page = admin_page.page
    admin_page.goto(f"rollouts/{MODEL}")
    main = page.inner_text("main")
    assert f"v{demo.broken}" in main and "rolled_back" in main
    row = page.locator("#live table tr", has_text="error_rate").first.inner_text()
    assert "fail" in row and "0.01" in row, row  # the breached guardrail, against its limit
    assert re.search(r"\d+ / \d+", row), row  # with its sample sizes
    assert "error_rate" in page.locator("#live section", has_text="Events").inner_text()
    assert page.locator("button").filter(has_text="Promote").count() == 0  # it is over: nothing to act on


def test_an_admin_promotes_a_staged_rollout_by_clicking(admin_page: Watched, demo: Demo) -> None:
    project = demo.project()
    try:
        control.start_rollout(project, MODEL, 2, actor="console-test", plan="shadow,50,100", stage_seconds=3600)
        page = admin_page.page
        admin_page.goto(f"rollouts/{MODEL}")
        assert "shadow" in page.locator("#live").inner_text()
        admin_page.shot("rollout")
        questions: list[str] = []

        def accept(dialog: Any) -> None:
            questions.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        page.get_by_role("button", name="Promote to the next stage").click()
        page.wait_for_url(re.compile(r"done="))
        assert questions and "Promote" in questions[0]
        assert page.locator("p.flash").count() == 1
        ctl = RolloutController(project)
        state = ctl.get(MODEL)
        assert state.candidate == 2 and str(state.current) == "50"
        assert ctl.events(state.id)[-1]["actor"] == "token:console-admin"
    finally:
        project.close()


def test_a_read_token_sees_no_action_and_a_forged_post_is_403(read_page: Watched, demo: Demo) -> None:
    page = read_page.page
    read_page.goto(f"rollouts/{MODEL}")
    assert page.locator("form.action").count() == 0 and page.locator("button.primary, button.danger").count() == 0
    assert "needs an admin token" in page.inner_text("main")
    project = demo.project()
    try:
        before = str(RolloutController(project).get(MODEL).current)
        # The read token's own session cookie, even with a CSRF token it could compute: refused by role.
        from modelmill.console.session import csrf_token

        forged = page.request.post(f"{read_page.base}/rollouts/{MODEL}/promote",
                                   form={"csrf": csrf_token(demo.read), "reason": "forged"})
        assert forged.status == 403
        api = httpx.post(f"{demo.url}/v1/rollouts/{MODEL}/promote", headers={"Authorization": f"Bearer {demo.read}"})
        assert api.status_code == 403
        assert str(RolloutController(project).get(MODEL).current) == before
    finally:
        project.close()


def test_the_monitoring_page_draws_a_gap_where_a_window_has_no_data(admin_page: Watched) -> None:
    page = admin_page.page
    admin_page.goto("monitoring?clock=event&window=1h")  # March's nights have no departures: hours with no data
    gaps = page.locator("figure.chart rect.gap")
    assert gaps.count() > 0
    assert page.locator("figure.chart").filter(has_text="Latency of").count() >= 1
    text = page.inner_text("main")
    assert "Delayed-label metrics" in text and "Alert history" in text
    page.locator("section", has_text="Latency percentiles").first.scroll_into_view_if_needed()
    admin_page.shot("monitoring")


def test_the_demos_delayed_label_metrics_are_on_its_event_clock(admin_page: Watched) -> None:
    page = admin_page.page
    admin_page.goto("monitoring?window=1d")  # no ?clock=: the demo's [monitoring] clock = "event"
    section = page.locator("section", has_text="Delayed-label metrics over time").first
    assert "(event clock)" in section.locator("h2").inner_text()
    auc = section.locator("figure.chart").filter(has=page.locator("svg[aria-label=auc]")).first
    ticks = auc.locator("svg text").all_text_contents()  # SVG text has no innerText
    assert any(t.startswith("2013-03") for t in ticks), ticks  # March 2013 day by day, not the run's minutes
    assert auc.locator("circle").count() >= 10  # one point per replayed day and version served
    assert section.locator("figure.chart", has_text="Labelled predictions per window").count() == 1


def test_every_page_loads_with_no_console_error_and_no_request_leaving_127_0_0_1(admin_page: Watched,
                                                                                  demo: Demo) -> None:
    paths = ["", "runs", "rollouts", f"rollouts/{MODEL}", "experiments", "monitoring", "monitoring?clock=event",
             "monitoring?window=1d",
             "ingestion", f"models/{MODEL}", f"models/{MODEL}/versions/1", f"models/{MODEL}/versions/{demo.broken}"]
    for path in paths:
        admin_page.goto(path)
        admin_page.page.wait_for_load_state("networkidle")
    admin_page.page.goto(f"{admin_page.base}/ingestion")
    letters = admin_page.page.locator("a[href*='/dead-letters/']")
    if letters.count():
        letters.first.click()
        admin_page.page.wait_for_load_state("networkidle")
    assert admin_page.errors == []
    local = f"{demo.url}/"
    outside = [u for u in admin_page.requests if not (u.startswith(local) or u.startswith("data:"))]
    assert outside == [] and len(admin_page.requests) >= len(paths)
    admin_page.shot("ingestion")


def test_keyboard_reaches_the_skip_link_and_the_navigation(admin_page: Watched) -> None:
    page = admin_page.page
    admin_page.goto("")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("g")
    page.keyboard.press("m")
    page.wait_for_url(re.compile(r"/ui/monitoring$"))
    assert json.loads(json.dumps(page.title())).startswith("Monitoring")
