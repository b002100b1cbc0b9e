"""The documentation site: its reference is complete, and it builds offline with ``mkdocs build --strict``.

The reference pages are generated (scripts/gen_reference.py). These tests walk the live objects
themselves, not the generator's lists: the Typer app, the Starlette routes and the OpenAPI document,
the settings the code reads, and the exception tree. So a command, option, route, key or error that
someone adds fails here until the reference shows it, and nothing here lists them by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "modelmill"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_reference", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _generator()


@pytest.fixture(scope="module")
def pages(gen: ModuleType) -> dict[str, str]:
    return gen.pages()


def _sections(page: str) -> dict[str, str]:
    """The page cut at its headings: anchor (``{#anchor}``) or heading text -> the text up to the next one."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", page, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        anchor = re.search(r"\{#([^}]+)\}\s*$", heading)
        key = anchor.group(1) if anchor else heading.lstrip("#").strip()
        out[key] = body
    return out


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---- the CLI ------------------------------------------------------------------------------------


def _commands() -> Iterator[tuple[str, Any, Any]]:
    import typer.main

    from modelmill.cli import app

    root = typer.main.get_command(app)
    context = type(root.make_context("modelmill", ["--help"], resilient_parsing=True))

    def walk(cmd: Any, path: str, parent: Any) -> Iterator[tuple[str, Any, Any]]:
        ctx = context(cmd, info_name=path.split()[-1], parent=parent)
        yield path, cmd, ctx
        for name, sub in getattr(cmd, "commands", {}).items():
            if not sub.hidden:
                yield from walk(sub, f"{path} {name}", ctx)

    yield from walk(root, "modelmill", None)


def test_every_command_and_option_is_in_the_cli_reference(pages: dict[str, str]) -> None:
    sections = _sections(pages["reference/cli.md"])
    commands = list(_commands())
    assert len(commands) > 20  # the walk reached the subcommands
    for path, cmd, ctx in commands:
        body = sections.get(_anchor(path))
        assert body is not None and re.search(rf"^#+ {path} ", pages["reference/cli.md"], flags=re.M), \
            f"`{path}` has no section in the CLI reference"
        plain = body.replace("\\|", "|").replace("\\*", "*").replace("\\[", "[")  # as it reads
        first_line = (cmd.help or "").strip().splitlines()[0] if cmd.help else ""
        assert first_line.split("`")[0][:40] in plain, f"`{path}`: its help is not in its section"
        for param in cmd.get_params(ctx):
            if param.hidden:
                continue
            for opt in (*param.opts, *param.secondary_opts):
                shown = opt if opt.startswith("-") else (param.metavar or opt)  # an argument: [path]
                assert re.search(rf"`[^`\n]*{re.escape(shown)}[^`\n]*`", body, flags=0 if opt.startswith("-")
                                 else re.I), \
                    f"`{path}`: {opt} is not in the CLI reference"
            if param.help:
                assert param.help.split("`")[0][:30] in plain, \
                    f"`{path}` {param.opts[0]}: its help is not in the reference"
            default = param.default
            if isinstance(default, int | float | str) and not isinstance(default, bool) and default != "" \
                    and not callable(default):
                assert f"`{getattr(default, 'value', default)}`" in body, \
                    f"`{path}` {param.opts[0]}: its default {default!r} is not in the reference"


# ---- the HTTP API -------------------------------------------------------------------------------


def test_every_route_is_in_the_http_reference(pages: dict[str, str]) -> None:
    from starlette.routing import Route

    from modelmill.serving import FunctionModel, ModelServer, StaticSource, create_app
    from modelmill.serving.openapi import openapi_document

    app = create_app(ModelServer(StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0])])))
    routes = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    assert len(routes) > 10
    page = pages["reference/http.md"]
    sections = _sections(page)
    doc = openapi_document()
    for method, path in sorted(routes):
        body = sections.get(_anchor(f"{method} {path}"))
        assert body is not None and f"## `{method} {path}`" in page, \
            f"{method} {path} has no section in the HTTP reference"
        op = doc["paths"][path][method.lower()]
        assert op["summary"].split("`")[0][:40] in body
        for status in op["responses"]:
            assert re.search(rf"^\| {status} \|", body, flags=re.M), f"{method} {path}: status {status} missing"
        for ref in re.findall(r"#/components/schemas/(\w+)", str(op)):
            assert f"[{ref}]" in body, f"{method} {path}: schema {ref} is not named"
        for param in op.get("parameters", []):
            assert f"`{param['name']}`" in body
    for name in doc["components"]["schemas"]:
        assert f"schema-{_anchor(name)}" in sections, f"schema {name} is not in the HTTP reference"


# ---- configuration ------------------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" not in path.parts:
            rel = path.relative_to(SRC.parent).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            text = path.read_text()
            yield name, text, ast.parse(text)


def test_every_configuration_key_is_in_the_config_reference(pages: dict[str, str], gen: ModuleType) -> None:
    page = pages["reference/config.md"]
    rows = set(re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", page, flags=re.M))
    from modelmill.config import BACKEND_KEYS

    for key in BACKEND_KEYS:
        assert f"backends.{key}" in rows and f"`MODELMILL_{key.upper()}`" in page
    sections = set()
    for module, text, tree in _sources():
        sections |= set(re.findall(r"\.section\(\s*\"([a-z_]+)\"\s*\)", text))
        # a table read raw from Settings.extra, such as [[webhooks]] (an array of tables section() cannot give)
        sections |= set(re.findall(r"(?:\.extra|getattr\(\w+, \"extra\", \{\}\))\.get\(\"([a-z_]+)\"", text))
        for node in ast.walk(tree):
            # every key a ConfigError names, such as ConfigError("serving.max_wait_us", …)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError" and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                key = node.args[0].value
                if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key) and key.split(".")[0] in sections | {"backends"}:
                    assert key in rows, f"{module}: the key {key!r} of a ConfigError is not in the reference"
            # every MODELMILL_* variable
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"MODELMILL_[A-Z0-9_]+", node.value):
                assert f"`{node.value}`" in page, f"{module}: {node.value} is not in the reference"
            # the keys a table is checked against (_MODEL_KEYS = ("feature_service", …) next to a ConfigError)
            if isinstance(node, ast.Assign) and (".section(" in text or '"extra"' in text) and "ConfigError" in text:
                for target in node.targets:
                    if isinstance(target, ast.Name) and re.fullmatch(r"_[A-Z_]*KEYS", target.id):
                        for name in _strings(getattr(importlib.import_module(module), target.id)):
                            assert re.search(rf"\b{re.escape(name)}\b", page), \
                                f"{module}: the key {name!r} of {target.id} is not in the reference"
    assert {"serving", "monitoring", "features", "ingest", "webhooks"} <= sections
    for name in sections:
        assert f"## `[{name}]`" in page or f"## `[[{name}]]`" in page, \
            f"the section [{name}] is not in the configuration reference"
    # Settings tables read into dataclasses field by field: every field is a key.
    for section, cls in _config_dataclasses(sections):
        source = inspect.getsource(cls)
        dropped = set()
        for group in re.findall(r"-\s*\{([^}]*)\}", source):
            dropped |= set(re.findall(r"\"(\w+)\"", group))
        for f in dataclasses.fields(cls):
            if f.name not in dropped:
                assert any(r.startswith(section) and r.endswith(f".{f.name}") for r in rows), \
                    f"{cls.__name__}.{f.name} ([{section}]) is not in the configuration reference"
    # and every key the generator found is a row (with the default it found)
    for key in gen.config_keys():
        assert key.dotted in rows, f"{key.dotted} (read by {sorted(key.readers)}) is not a row of the reference"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, tuple | list | set | frozenset):
        for v in value:
            yield from _strings(v)


def _config_dataclasses(sections: set[str]) -> Iterator[tuple[str, type]]:
    """Dataclasses whose ``from_section`` keeps the keys named like their fields, and the section they read.

    A class belongs to a section when a ConfigError in its module names ``section.field``.
    """
    for module, text, _ in _sources():
        if "fields(cls)" not in text or "def from_section" not in text:
            continue
        mod = importlib.import_module(module)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != module or not dataclasses.is_dataclass(cls) or "from_section" not in vars(cls):
                continue
            if "fields(cls)" not in inspect.getsource(vars(cls)["from_section"].__func__):
                continue
            named = set(re.findall(r"ConfigError\(\s*f?\"([a-z_]+)\.", inspect.getsource(cls)))
            for section in sorted(named & sections):
                yield section, cls


# ---- errors -------------------------------------------------------------------------------------


def test_every_error_class_is_in_the_error_reference(pages: dict[str, str], gen: ModuleType) -> None:
    from modelmill import errors

    sections = _sections(pages["reference/errors.md"])
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert errors.ModelmillError in classes
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == "modelmill.errors":
            assert cls in classes, f"{cls.__name__} is not in modelmill.errors.__all__"
    for cls in classes:
        body = sections.get(_anchor(cls.__name__))
        assert body is not None and f"\n## {cls.__name__} " in pages["reference/errors.md"], \
            f"{cls.__name__} has no section in the error reference"
        doc = inspect.getdoc(cls) or ""
        assert doc, f"{cls.__name__} has no docstring"
        assert doc.split("`")[0][:40] in body.replace("&lt;", "<").replace("\\[", "["), \
            f"{cls.__name__}: its docstring is not in its section"
        assert cls.__name__ in gen.WHAT_TO_DO, \
            f"{cls.__name__}: say what a user does about it in WHAT_TO_DO of scripts/gen_reference.py"
        assert "**What to do:**" in body


# ---- the Python API -----------------------------------------------------------------------------


def test_every_public_package_has_a_python_api_page(pages: dict[str, str]) -> None:
    packages = ["modelmill"] + [f"modelmill.{p.parent.name}" for p in sorted(SRC.glob("*/__init__.py"))
                                if "__all__" in p.read_text()]
    assert "modelmill.serving" in packages
    for name in packages:
        slug = "modelmill" if name == "modelmill" else name.split(".")[-1]
        page = pages.get(f"reference/python/{slug}.md")
        assert page is not None and f"::: {name}\n" in page, f"{name} has no Python API page"
        assert f"({slug}.md)" in pages["reference/python/index.md"]


def test_docstring_examples_become_fenced_code(gen: ModuleType) -> None:
    text = 'Routes.\n\n>>> rt.names()\n[\'canary\', \'champion\']\n\nThe format::\n\n    [serving]\n    a = 1\n'
    out = gen._prose(text)
    assert "```pycon\n>>> rt.names()\n['canary', 'champion']\n```" in out
    assert "The format:\n\n```\n[serving]\na = 1\n```" in out
    assert gen._prose("Use :class:`ModelServer` or :meth:`~x.Y.run`; send <token> rows [n, k] `a[0]`.") == \
        "Use `ModelServer` or `run`; send &lt;token> rows \\[n, k] `a[0]`."


# ---- the site -----------------------------------------------------------------------------------


class _Resources(HTMLParser):
    """Every URL a page makes the browser fetch (not the links a reader may follow)."""

    FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src", "video": "src",
               "embed": "src", "object": "data", "link": "href"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = self.FETCHED.get(tag)
        values = dict(attrs)
        if tag == "link" and values.get("rel") in ("canonical", "alternate", "prev", "next"):
            return
        if wanted and values.get(wanted):
            self.urls.append(str(values[wanted]))
        if values.get("style"):
            self.urls += re.findall(r"url\(['\"]?([^'\")]+)", str(values["style"]))


@pytest.mark.slow  # about 30 s on two cores
def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    html_files = sorted(site.rglob("*.html"))
    for page in ("reference/cli.html", "reference/http.html", "reference/config.html", "reference/errors.html",
                 "reference/formats.html", "reference/python/serving.html", "concepts/safety.html",
                 "guarantees.html", "promises.html"):
        assert (site / page).is_file(), page
    for path in html_files:
        text = path.read_text()
        parser = _Resources()
        parser.feed(text)
        remote = [u for u in parser.urls if re.match(r"(https?:)?//", u)]
        assert not remote, f"{path.relative_to(site)} fetches {remote}"
        for host in ("fonts.googleapis", "fonts.gstatic", "googletagmanager", "google-analytics", "unpkg.com",
                     "jsdelivr", "cdnjs"):
            assert host not in text, f"{path.relative_to(site)} names {host}"
        assert 'class="mermaid"' not in text  # Material would fetch mermaid.js from a CDN
    for css in site.rglob("*.css"):
        assert not re.search(r"url\(['\"]?(https?:)?//", css.read_text()), f"{css.name} fetches a remote URL"


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_the_generator_follows_a_table_through_the_code_that_reads_it(gen: ModuleType) -> None:
    tree = ast.parse(
        "def read(settings):\n"
        "    section = dict(settings.section('demo'))\n"
        "    rows = section.get('rows', 10)\n"
        "    if 'mode' in section:\n"
        "        pass\n"
        "    inner = section.get('inner', {})\n"
        "    for rule in section.get('rules', []):\n"
        "        rule.get('name')\n"
        "    return inner['depth'], {'a', 'b'} & set(section)\n")
    fn = tree.body[0]
    call = next(n for n in ast.walk(fn) if gen._is_section_call(n) == "demo")
    keys: dict[tuple[str, str], Any] = {}
    gen._Reader(keys, set()).follow("synthetic", None, fn, "demo", None, root=call)
    found = {(k.table, k.name): k.default for k in keys.values()}
    assert found == {("demo", "rows"): "10", ("demo", "mode"): "", ("demo", "inner"): "{}",
                     ("demo", "rules"): "[]", ("demo.rules", "name"): "", ("demo.inner", "depth"): "",
                     ("demo", "a"): "", ("demo", "b"): ""}


def test_the_promises_page_links_the_sites_pages_the_readme_links(pages: dict[str, str]) -> None:
    readme = (ROOT / "README.md").read_text()
    page = pages["promises.md"]
    assert "](docs/" not in page  # README-relative links would not resolve from the site's root
    for target in re.findall(r"\]\(docs/([^)#]+\.md)", readme):
        if f"]({target}" in page:
            assert (ROOT / "docs" / target).exists(), target


def test_the_generator_reads_an_array_of_tables_from_settings_extra(gen: ModuleType) -> None:
    tree = ast.parse(
        "def read(settings):\n"
        "    raw = getattr(settings, 'extra', {}).get('hooks')\n"
        "    for i, item in enumerate(raw):\n"
        "        url = item.get('url')\n"
        "        events = item.get('events', ['*'])\n"
        "        if 'secret' in item:\n"
        "            pass\n")
    fn = tree.body[0]
    assert gen._is_section_call(next(n for n in ast.walk(fn) if isinstance(n, ast.Call))) is None
    call = next(n for n in ast.walk(fn) if gen._is_table_read(n) == "hooks")
    keys: dict[tuple[str, str], Any] = {}
    gen._Reader(keys, set()).follow("synthetic", None, fn, "hooks", None, root=call)
    assert {(k.table, k.name): k.default for k in keys.values()} == {
        ("hooks", "url"): "", ("hooks", "events"): '["*"]', ("hooks", "secret"): ""}


def test_the_webhooks_reference_has_every_key_the_loader_accepts_with_its_default(
        pages: dict[str, str], gen: ModuleType) -> None:
    from modelmill.events import _KEYS, Webhook

    found = {k.name: k.default for k in gen.config_keys() if k.table == "webhooks"}
    assert set(found) == set(_KEYS)
    numbers = {"max_attempts", "backoff_s", "max_backoff_s", "timeout_s"}  # read by _number(item, key, NAME, DEFAULT)
    for f in dataclasses.fields(Webhook):
        if f.name in numbers:
            assert float(found[f.name]) == float(f.default), (f.name, found[f.name], f.default)
    assert found["events"] == '["*"]'
    page = pages["reference/config.md"]
    body = _sections(page)["webhooks"]
    assert page.count("## `[[webhooks]]`") == 1
    for name in _KEYS:
        assert f"| `webhooks.{name}` |" in body, f"webhooks.{name} is not a row of [[webhooks]]"
    assert "an http(s) URL" in body  # the accepted form, from the loader's ConfigError


def test_every_argument_of_the_event_schema_and_feature_formats_is_in_the_reference(
        pages: dict[str, str], gen: ModuleType) -> None:
    sections = _sections(pages["reference/formats.md"])
    for _, module_name, _ in gen.FORMAT_MODULES:
        module = importlib.import_module(module_name)
        classes = [getattr(module, n) for n in module.__all__ if dataclasses.is_dataclass(getattr(module, n))]
        assert classes, module_name
        for cls in classes:
            body = sections.get(_anchor(f"{module_name} {cls.__name__}"))
            assert body is not None, f"{module_name}.{cls.__name__} is not in the formats reference"
            for f in dataclasses.fields(cls):
                if f.init:
                    assert f"| `{f.name}` |" in body, f"{cls.__name__}.{f.name} is not in the formats reference"
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, tuple | dict) and value and all(isinstance(v, str) for v in value):
                for v in value:
                    assert f"`{v}`" in pages["reference/formats.md"], f"{module_name}.{name}: {v!r} is missing"
