"""``modelmill ui``: the console on its own, in a subprocess over a project folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelmill.config import load_settings
from modelmill.demo.server import free_port
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.security import TokenStore
from tests.serving.conftest import signature, train_lr


@pytest.mark.slow
def test_modelmill_ui_serves_the_console_alone(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    clear_cache()
    project = Project(load_settings(cwd=tmp_path))
    Registry(project).register("churn", train_lr(0), flavor="sklearn", signature=signature())
    secret = TokenStore(project).create("read", name="viewer")[1]
    project.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelmill", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                home = httpx.get(f"{url}/", timeout=1.0)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        assert home.status_code == 307 and home.headers["location"] == "/ui/"
        page = httpx.get(f"{url}/ui/", headers={"Authorization": f"Bearer {secret}"})
        assert page.status_code == 200 and "churn" in page.text
        assert httpx.get(f"{url}/ui/", follow_redirects=False).status_code == 303  # no token: to the sign-in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = subprocess.run([sys.executable, "-m", "modelmill", "ui", "--prefix", "ui/"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--prefix" in (bad.stdout + bad.stderr) and "Traceback" not in bad.stderr
