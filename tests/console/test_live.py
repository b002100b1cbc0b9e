"""The console's live pages in a real browser: a rollout change made elsewhere shows without a reload,
and the experiment page draws its analysis over time (its screenshot goes to docs/console/experiment.png).

The console runs alone (as ``modelmill ui`` runs it) under uvicorn on 127.0.0.1; Playwright drives
Debian's Chromium. While the page of an active rollout is open, the rollout is rolled back through
the control plane (as ``modelmill rollout rollback`` does); the page's own script re-reads it and swaps
its live part in place: the same document (a marker set in it survives), the new state shown.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from modelmill import control
from modelmill.console.app import create_console
from modelmill.experiments import Experiment
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.security import Authenticator, TokenStore
from tests.conftest import need
from tests.console.conftest import EMPTY, HOURS
from tests.serving.conftest import free_port, signature, train_lr

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


class Console:
    """The console app served by uvicorn in a thread of this process."""

    def __init__(self, project: Project, auth: Authenticator) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_console(project, auth), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Console:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise AssertionError("the console did not start")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(shutil.which("chromium"), "chromium is not on PATH", "install it with scripts/install-chromium.sh")
    need(importlib.util.find_spec("playwright"), "playwright is not installed", "pip install -e '.[dev]'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page signed in with ``secret``, recording console errors, requests and navigations."""

    def __init__(self, browser: Any, url: str, secret: str, path: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.documents: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("framenavigated", lambda f: self.documents.append(f.url))
        self.page.goto(f"{url}/signin?next={path}")
        self.page.fill("#token", secret)
        self.page.press("#token", "Enter")
        self.page.wait_for_url(f"{url}{path}")

    def outside(self) -> list[str]:
        return [u for u in self.requests if not (u.startswith(f"{self.url}/") or u.startswith("data:"))]


def _reader(project: Project) -> tuple[Authenticator, str]:
    store = TokenStore(project)
    secret = store.create("read", name="watcher")[1]
    auth = Authenticator(store)
    auth.refresh()
    return auth, secret


@pytest.fixture
def live(project: Project) -> Iterator[tuple[Project, str, str]]:
    registry = Registry(project)
    for seed in range(2):
        registry.register("m", train_lr(seed), flavor="sklearn", signature=signature())
    registry.set_alias("m", "production", 1, actor="test", reason="first")
    control.start_rollout(project, "m", 2, actor="test", plan="shadow,50,100", stage_seconds=3600)
    auth, secret = _reader(project)
    with Console(project, auth) as console:
        yield project, console.url, secret


def test_the_rollout_page_shows_a_rollback_made_elsewhere_without_a_reload(browser: Any,
                                                                          live: tuple[Project, str, str]) -> None:
    project, url, secret = live
    w = Watched(browser, url, secret, "/rollouts/m")
    page = w.page
    try:
        live_part = page.locator("#live")
        assert "running" in live_part.inner_text() and "rolled_back" not in live_part.inner_text()
        assert page.locator("body").get_attribute("data-poll") == "3"
        page.evaluate("window.__opened = true")
        loaded = len(w.documents)

        control.rollback_rollout(project, "m", actor="elsewhere", reason="rolled back while watched")

        # The page's CSP forbids evaluated strings (wait_for_function): wait on the element's text instead.
        page.locator("#live", has_text="rolled_back").wait_for(timeout=20_000)
        text = live_part.inner_text()
        assert "rolled back while watched" in text and "elsewhere" in text  # the reason and the event's actor
        assert page.evaluate("window.__opened") is True  # the same document: swapped in place, not reloaded
        assert len(w.documents) == loaded
        assert live_part.get_attribute("data-updated") is not None
        polls = [u for u in w.requests if u == f"{url}/rollouts/m"]
        assert len(polls) >= 2  # the page itself, then at least one re-read by its script
    finally:
        w.context.close()
    assert w.errors == [] and w.outside() == []


def test_the_experiment_page_over_time_in_a_browser(browser: Any, project: Project, served: Experiment) -> None:
    auth, secret = _reader(project)
    with Console(project, auth) as console:
        w = Watched(browser, console.url, secret, "/experiments/ab")
        try:
            over = w.page.locator("#over-time")
            assert over.locator("figure.chart").count() == 4
            w.page.select_option("#view", "window")
            w.page.fill("#over-time input[name=window]", "1h")
            w.page.press("#over-time input[name=window]", "Enter")  # the form is usable from the keyboard
            w.page.wait_for_url("**view=window**")
            assert over.locator("figure.chart rect.gap").count() >= 4  # the two empty hours, in every chart
            rows = over.locator("table tbody tr")
            assert rows.count() == HOURS
            assert rows.filter(has_text="no data").count() == len(EMPTY)
            over.scroll_into_view_if_needed()
            SHOTS.mkdir(parents=True, exist_ok=True)
            w.page.screenshot(path=str(SHOTS / "experiment.png"), full_page=False)
        finally:
            w.context.close()
    assert w.errors == [] and w.outside() == []
