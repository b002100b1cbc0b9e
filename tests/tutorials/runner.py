"""Run a tutorial page as written: its titled blocks become files, its ``bash`` blocks one script.

A fenced block whose info string carries ``title="NAME"`` is written to ``NAME`` in the working folder (the
page shows the user the file to create); every untitled ``bash`` block is a command the user types, run in
order by one ``bash -euo pipefail``, so a command that fails (a non-zero exit) fails the page. Blocks in any
other language (``console``, ``json``, ``text``) are output the page shows and are not run. The page's port
8080 (`modelmill serve`'s default) is replaced by a free one, so the test can run beside other servers.

This module imports nothing from modelmill: a tutorial is run as a user runs it, through the CLI and HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HOWTO", "Block", "blocks", "free_port", "read_json", "run_howto", "run_page"]

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    lang: str
    title: str | None
    body: str


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    out = []
    for m in _FENCE.finditer(page.read_text()):
        info = m["info"].strip()
        lang = info.split()[0] if info else ""
        title = _TITLE.search(info)
        out.append(Block(lang, title["title"] if title else None, m["body"]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_page(page: Path, workdir: Path, *, port: int, timeout: float) -> subprocess.CompletedProcess[str]:
    """Write the page's files into ``workdir`` and run its commands there; the completed process is returned."""
    commands = []
    for block in blocks(page):
        body = block.body.replace("8080", str(port))
        if block.title is not None:
            target = workdir / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
        elif block.lang == "bash":
            commands.append(body)
    script = workdir / "tutorial.sh"
    script.write_text("\n".join(commands))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    bash = shutil.which("bash") or "/bin/bash"
    # its own process group: whatever the page leaves running (the server) is stopped with it
    proc = subprocess.Popen([bash, "-euo", "pipefail", str(script)], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


HOWTO = Path(__file__).resolve().parents[2] / "docs" / "howto"


def run_howto(page: str, workdir: Path, timeout: float = 420) -> Path:
    """Run ``docs/howto/<page>`` in ``workdir`` (on a free port); fail with the end of its output unless it exits 0."""
    done = run_page(HOWTO / page, workdir, port=free_port(), timeout=timeout)
    assert done.returncode == 0, f"{page} failed (exit {done.returncode}):\n{done.stdout[-6000:]}"
    return workdir


def read_json(workdir: Path, name: str) -> Any:
    """A JSON file a page's commands wrote."""
    return json.loads((workdir / name).read_text())
