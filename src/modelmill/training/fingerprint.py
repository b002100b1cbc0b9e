"""What a pipeline step's cache key is made of: its code, the libraries it runs on, and its data.

* **Code**: the step function's source and bytecode, and the same for every function of its own
  module it calls (transitively); every *first-party* module it uses (a module of the user's own
  code: not the standard library and not an installed distribution) is hashed whole, with the
  first-party modules those import, transitively (their import graph read from the source).
* **Libraries**: the version of every installed distribution those modules and functions import
  (``numpy 2.1.0``), and Python's version for the standard library.
* **Data**: an input whose value names a local file or folder is fingerprinted by content
  (sha256, memoised per size and modification time); one that names a remote object
  (``s3://``, ``gs://``, ``http(s)://``...) by the size, modification time and ETag its store
  reports (fsspec). A path alone never makes a key: when a remote object reports neither a
  modification time nor an ETag, or cannot be reached, the step is not cached (it runs, and
  nothing is stored under the key).

    >>> import math
    >>> def area(r):
    ...     return math.pi * r * r
    >>> fp = code_fingerprint(area)
    >>> sorted(fp)
    ['code', 'libraries']
    >>> fp == code_fingerprint(area)
    True
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["DataUnavailable", "code_fingerprint", "data_fingerprint", "looks_like_data"]

_STDLIB_DIRS = tuple({os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"],
                                                     sysconfig.get_paths()["platstdlib"])})
_SITE_MARKERS = ("site-packages", "dist-packages")
_REMOTE = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://", "http://", "https://", "hf://")
_lock = threading.Lock()
_file_hashes: dict[tuple[str, int, int, int], str] = {}
_dists: dict[str, list[str]] | None = None


class DataUnavailable(Exception):
    """An input's data cannot be fingerprinted: the step must not be cached."""


# ---- code --------------------------------------------------------------------------------------


def code_fingerprint(fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"code": sha256, "libraries": {distribution: version}}`` of ``fn`` and what it uses."""
    walker = _Walker(fn)
    walker.walk_function(fn)
    walker.walk_modules()
    digest = hashlib.sha256()
    for part in sorted(walker.parts):
        digest.update(part.encode())
        digest.update(b"\0")
    return {"code": digest.hexdigest(), "libraries": dict(sorted(walker.libraries.items()))}


class _Walker:
    def __init__(self, root: Callable[..., Any]) -> None:
        self.home = getattr(root, "__module__", None)
        self.parts: set[str] = set()
        self.libraries: dict[str, str] = {}
        self.functions: set[int] = set()
        self.modules: set[str] = set()  # first-party module names to hash whole
        self.pending: list[str] = []

    # functions of the step's own module: function by function
    def walk_function(self, fn: Any) -> None:
        fn = inspect.unwrap(fn)
        if not isinstance(fn, types.FunctionType) or id(fn) in self.functions:
            return
        self.functions.add(id(fn))
        try:
            source = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError):
            source = ""
        code = fn.__code__
        self.parts.add(f"fn:{fn.__module__}.{fn.__qualname__}:{hashlib.sha256(source.encode()).hexdigest()}:"
                       f"{hashlib.sha256(_code_bytes(code)).hexdigest()}")
        names: set[str] = set()
        _names(code, names)
        for name in sorted(names):
            if name in fn.__globals__:
                self.use(fn.__globals__[name])
        for cell in fn.__closure__ or ():
            try:
                self.use(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        if source:
            for module_name in _imports(source, fn.__module__):
                self.use_module_name(module_name)

    def use(self, obj: Any) -> None:
        from modelmill.training.pipeline import Step

        if isinstance(obj, Step):
            obj = obj.fn
        if isinstance(obj, types.ModuleType):
            self.use_module_name(obj.__name__)
            return
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
            return
        if module == self.home and isinstance(obj, types.FunctionType):
            self.walk_function(obj)
        else:
            self.use_module_name(module)

    def use_module_name(self, name: str) -> None:
        top = name.split(".")[0]
        if not top or top in sys.builtin_module_names or (top in sys.stdlib_module_names and _stdlib(name)):
            self.libraries.setdefault("python", ".".join(map(str, sys.version_info[:3])))
            return
        dists = _distributions().get(top)
        if dists:
            for dist in dists:
                try:
                    self.libraries[dist] = importlib.metadata.version(dist)
                except importlib.metadata.PackageNotFoundError:
                    self.libraries[dist] = "unknown"
            return
        path = _module_file(name)
        if path is None:
            self.libraries[top] = "unknown"
            return
        if _is_library_file(path):
            self.libraries[top] = "unknown"
            return
        if name not in self.modules:
            self.modules.add(name)
            self.pending.append(name)

    # first-party modules: whole, with their own first-party imports
    def walk_modules(self) -> None:
        while self.pending:
            name = self.pending.pop()
            path = _module_file(name)
            if path is None:
                continue
            try:
                text = Path(path).read_bytes()
            except OSError:
                self.parts.add(f"module:{name}:unreadable")
                continue
            self.parts.add(f"module:{name}:{hashlib.sha256(text).hexdigest()}")
            try:
                imported = _imports(text.decode("utf-8", "replace"), name, is_package=path.endswith("__init__.py"))
            except SyntaxError:
                continue
            for module_name in imported:
                self.use_module_name(module_name)


def _code_bytes(code: types.CodeType) -> bytes:
    out = [code.co_code, repr([c for c in code.co_consts if not isinstance(c, types.CodeType)]).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out.append(_code_bytes(const))
    return b"".join(out)


def _names(code: types.CodeType, into: set[str]) -> None:
    into.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _names(const, into)


def _imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Absolute names of the modules ``source`` (of ``module``) imports, anywhere in it."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target:
                continue
            found.append(target)
            for alias in node.names:  # ``from pkg import submodule``
                candidate = f"{target}.{alias.name}"
                if candidate in sys.modules or _find(candidate):
                    found.append(candidate)
    return found


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) if module is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        path = spec.origin if spec is not None and spec.has_location else None
    return os.path.realpath(path) if path else None


def _stdlib(name: str) -> bool:
    """A standard-library name that is the standard library's (not a user's ``pipes.py`` shadowing it)."""
    path = _module_file(name)
    return path is None or any(path.startswith(d + os.sep) for d in _STDLIB_DIRS)


def _is_library_file(path: str) -> bool:
    if any(marker in Path(path).parts for marker in _SITE_MARKERS):
        return True
    return any(path.startswith(d + os.sep) for d in _STDLIB_DIRS)


def _distributions() -> dict[str, list[str]]:
    global _dists
    if _dists is None:
        _dists = {k: sorted(set(v)) for k, v in importlib.metadata.packages_distributions().items()}
    return _dists


# ---- data --------------------------------------------------------------------------------------


def looks_like_data(value: Any) -> bool:
    """Whether an input value names data to fingerprint: an existing local path, or a remote URL."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        return False
    if value.startswith(_REMOTE):
        return True
    if value.startswith("file://"):
        value = value[len("file://"):]
    try:
        return os.path.exists(value)
    except (OSError, ValueError):
        return False


def data_fingerprint(value: Any) -> str:
    """The fingerprint of the data ``value`` names (see the module docstring); raises
    :class:`DataUnavailable` when there is none to take."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise DataUnavailable(f"{value!r} is not a path or URL")
    if value.startswith(_REMOTE):
        return _remote(value)
    path = value[len("file://"):] if value.startswith("file://") else value
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for name in sorted(_files(path)):
            digest.update(os.path.relpath(name, path).encode() + b"\0" + _file_hash(name).encode() + b"\0")
        return "dir:" + digest.hexdigest()
    if os.path.isfile(path):
        return "file:" + _file_hash(path)
    raise DataUnavailable(f"{value} does not exist")


def _files(root: str) -> Iterable[str]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            yield os.path.join(folder, n)


def _file_hash(path: str) -> str:
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        known = _file_hashes.get(memo)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _lock:
        _file_hashes[memo] = value
    return value


def _remote(url: str) -> str:
    try:
        from modelmill.store.offline import open_filesystem

        fs, path = open_filesystem(url, key="data")
        info = fs.info(path)
    except Exception as exc:  # an unreachable store, a missing driver: no fingerprint, no cache
        raise DataUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
    lowered = {str(k).lower(): v for k, v in info.items()}
    etag = lowered.get("etag") or lowered.get("md5") or lowered.get("content_md5")
    mtime = lowered.get("mtime") or lowered.get("last_modified") or lowered.get("last-modified") \
        or lowered.get("lastmodified") or lowered.get("updated")
    if etag is None and mtime is None:
        raise DataUnavailable(f"{url}: the store reports neither a modification time nor an ETag")
    return f"remote:size={lowered.get('size')}:mtime={mtime}:etag={etag}"
