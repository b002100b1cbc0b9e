"""The cache key: a step's transitive first-party code, the versions of the libraries it imports and the
fingerprints of its data. Changing a helper function or an input file's content runs the step again;
changing nothing, or only touching a file, hits the cache."""

from __future__ import annotations

import http.server
import importlib
import importlib.metadata
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from modelmill.project import Project
from modelmill.training import Pipeline, pipeline_runs_of, step
from modelmill.training.fingerprint import code_fingerprint, data_fingerprint

HELPERS = '''
def scale(x):
    return x * 2
'''

PIPES = '''
import numpy as np

from modelmill.training import Pipeline, step

from {pkg} import helpers
from {pkg}.helpers import scale


def local_helper(x):
    return x + 1


@step(inputs=["path"], outputs=["rows"])
def read(path):
    with open(path) as fh:
        return [int(line) for line in fh if line.strip()]


@step(inputs=["rows"], outputs=["scaled"])
def transform(rows):
    return [scale(r) for r in rows]


@step(inputs=["rows"], outputs=["shifted"])
def shift(rows):
    return [local_helper(r) for r in rows]


@step(inputs=["rows"], outputs=["mean"])
def stats(rows):
    return float(np.mean(rows))


@step(inputs=["rows"], outputs=["via_module"])
def via_module(rows):
    return [helpers.scale(r) for r in rows]


pipe = Pipeline("keys", [read, transform, shift, stats, via_module])
'''


@pytest.fixture
def package(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A first-party package of the user's, importable from tmp_path (not site-packages)."""
    name = f"mmkeys_{request.node.name.split('[')[0][-20:]}_{os.getpid()}"
    root = tmp_path / "src" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "helpers.py").write_text(HELPERS)
    (root / "pipes.py").write_text(PIPES.format(pkg=name))
    sys.path.insert(0, str(tmp_path / "src"))
    yield name, root
    sys.path.remove(str(tmp_path / "src"))
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # a new mtime: reload reads the source
    importlib.invalidate_caches()


def _load(name: str) -> ModuleType:
    for mod in (f"{name}.helpers", f"{name}.pipes"):
        if mod in sys.modules:
            importlib.reload(sys.modules[mod])
    return importlib.import_module(f"{name}.pipes")


def _statuses(project: Project, module: ModuleType, data: Path) -> dict[str, str]:
    result = module.pipe.run(project, params={"path": str(data)})
    assert result.status == "finished", result.error
    return {s.name: s.status for s in result.steps}


def test_changing_nothing_hits_and_a_helper_function_in_another_module_invalidates(
        project: Project, package: tuple[str, Path], tmp_path: Path) -> None:
    name, root = package
    data = tmp_path / "rows.txt"
    data.write_text("1\n2\n3\n")
    mod = _load(name)
    assert set(_statuses(project, mod, data).values()) == {"ran"}
    assert set(_statuses(project, mod, data).values()) == {"cached"}  # nothing changed

    _edit(root / "helpers.py", HELPERS.replace("x * 2", "x * 3"))
    mod = _load(name)
    after = _statuses(project, mod, data)
    # Both steps that reach helpers.scale (by name and through the module) run again; the others stay cached.
    assert after == {"read": "cached", "transform": "ran", "shift": "cached", "stats": "cached",
                     "via_module": "ran"}
    assert mod.pipe.run(project, params={"path": str(data)}).value("scaled") == [3, 6, 9]


def test_a_helper_in_the_steps_own_module_invalidates_only_the_steps_that_call_it(
        project: Project, package: tuple[str, Path], tmp_path: Path) -> None:
    name, root = package
    data = tmp_path / "rows.txt"
    data.write_text("5\n")
    _statuses(project, _load(name), data)
    _edit(root / "pipes.py", PIPES.format(pkg=name).replace("return x + 1", "return x + 100"))
    after = _statuses(project, _load(name), data)
    assert after == {"read": "cached", "transform": "cached", "shift": "ran", "stats": "cached",
                     "via_module": "cached"}


def test_an_input_files_content_invalidates_and_a_touch_does_not(project: Project, package: tuple[str, Path],
                                                               tmp_path: Path) -> None:
    name, _ = package
    data = tmp_path / "rows.txt"
    data.write_text("1\n2\n")
    mod = _load(name)
    _statuses(project, mod, data)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    assert set(_statuses(project, mod, data).values()) == {"cached"}
    data.write_text("1\n7\n")  # same path, new content
    after = _statuses(project, mod, data)
    assert after["read"] == "ran" and after["transform"] == "ran"
    # the same content again is the first run's key: a hit, whatever the path's history
    data.write_text("1\n2\n")
    assert set(_statuses(project, mod, data).values()) == {"cached"}


def test_the_library_versions_a_step_imports_are_in_its_key(package: tuple[str, Path]) -> None:
    name, _ = package
    mod = _load(name)
    stats = code_fingerprint(mod.stats.fn)
    assert stats["libraries"]["numpy"] == np.__version__  # imported by the step's module, used by the step
    assert "modelmill" not in stats["libraries"]  # the module imports it, but this step does not use it

    def uses_modelmill() -> object:
        return Pipeline

    # An installed distribution (even an editable one) counts by its version, not its source.
    assert code_fingerprint(uses_modelmill)["libraries"] == {"modelmill": importlib.metadata.version("modelmill")}
    transform = code_fingerprint(mod.transform.fn)
    assert transform["code"] != stats["code"]


def test_files_read_by_the_function_itself_are_declared_with_reads(project: Project, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("lookup.csv").write_text("a,1\n")
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "p0").write_text("x")

    @step(inputs=["folder"], outputs=["n"], reads=["lookup.csv"])
    def count(folder: str) -> int:
        return len(os.listdir(folder)) + len(Path("lookup.csv").read_text())

    pipe = Pipeline("reads", [count])
    assert pipe.run(project, params={"folder": str(folder)}).steps[0].status == "ran"
    assert pipe.run(project, params={"folder": str(folder)}).steps[0].status == "cached"
    Path("lookup.csv").write_text("a,2\n")
    assert pipe.run(project, params={"folder": str(folder)}).steps[0].status == "ran"
    (folder / "p1").write_text("y")  # a folder input: a new file in it is new data
    assert pipe.run(project, params={"folder": str(folder)}).steps[0].status == "ran"
    assert pipe.run(project, params={"folder": str(folder)}).steps[0].status == "cached"


def test_a_step_with_cache_false_always_runs_and_its_unchanged_output_keeps_downstream_cached(
        project: Project) -> None:
    calls: list[str] = []

    @step(inputs=["n"], outputs=["fresh"], cache=False)
    def poll(n: int) -> int:
        calls.append("poll")
        return n

    @step(inputs=["fresh"], outputs=["out"])
    def use(fresh: int) -> int:
        calls.append("use")
        return fresh * 2

    pipe = Pipeline("uncached", [poll, use])
    pipe.run(project, params={"n": 1})
    again = pipe.run(project, params={"n": 1})
    assert [s.status for s in again.steps] == ["ran", "cached"] and calls == ["poll", "use", "poll"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _NoValidators(_Handler):
    """A server that says nothing about versions: no Last-Modified, no ETag."""

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() not in ("last-modified", "etag"):
            super().send_header(keyword, value)


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    folder = tmp_path / "served"
    folder.mkdir()
    servers = []
    for handler in (_Handler, _NoValidators):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, h=handler: h(*a, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield (f"http://127.0.0.1:{servers[0].server_address[1]}", f"http://127.0.0.1:{servers[1].server_address[1]}",
           folder)
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.slow  # waits out Last-Modified's whole second
def test_remote_data_keys_on_size_mtime_and_etag_and_is_not_cached_without_them(
        project: Project, http_folder: tuple[str, str, Path]) -> None:
    pytest.importorskip("aiohttp")  # fsspec's HTTP driver
    base, bare, folder = http_folder
    (folder / "data.csv").write_text("1,2\n")
    calls: list[str] = []

    @step(inputs=["url"], outputs=["seen"], data=["url"])
    def fetch(url: str) -> str:
        calls.append(url)
        return url

    pipe = Pipeline("remote", [fetch])
    url = f"{base}/data.csv"
    assert data_fingerprint(url).startswith("remote:size=4:")
    assert pipe.run(project, params={"url": url}).steps[0].status == "ran"
    assert pipe.run(project, params={"url": url}).steps[0].status == "cached"
    time.sleep(1.1)  # Last-Modified has whole seconds
    (folder / "data.csv").write_text("1,2,3\n")
    assert pipe.run(project, params={"url": url}).steps[0].status == "ran"

    # No modification time and no ETag: a path alone is no key, so the step runs every time.
    plain = f"{bare}/data.csv"
    first = pipe.run(project, params={"url": plain})
    second = pipe.run(project, params={"url": plain})
    assert [first.steps[0].status, second.steps[0].status] == ["ran", "ran"]
    log = pipeline_runs_of(project, "remote")[0]["steps"][0]["attempt_log"]
    assert any("not cached" in (entry.get("note") or "") for entry in log)
    # An unreachable store: no fingerprint either.
    assert pipe.run(project, params={"url": "http://127.0.0.1:9/none.csv"}).steps[0].status == "ran"
    assert pipe.run(project, params={"url": "http://127.0.0.1:9/none.csv"}).steps[0].status == "ran"
