"""The ``python`` flavor: a model that is your own code, for pre- and post-processing or any library.

A class with ``load(context)`` and ``predict(frame)``::

    class Scaled:
        def load(self, context):                  # once, when a server (or the registry) loads the version
            self.scale = float(context.artifacts["scale.txt"].read_text())

        def predict(self, frame):                 # a pandas DataFrame named and typed as the signature's inputs
            return frame["x"] * self.scale        # [n] (or [n, C] for a multiclass model)

is registered with ``Registry.register(name, Scaled(), flavor="python", signature=sig,
options={"artifacts": {"scale.txt": "path/to/scale.txt"}})``. What is stored is a bundle (a zip):

- ``code/<module>.py``: the source file that defines the class, and ``manifest.json`` naming the class;
- ``artifacts/<name>``: each artifact (a file, or a folder and everything under it);
- in ``manifest.json``: every file's sha256, the source's (``source_sha256``), and ``bundle_sha256``, the
  hash of all of them together.

Loading checks every file against the manifest and the manifest against ``bundle_sha256`` (beside the
registry's check of the whole artifact): a bundle whose hash differs is refused with an
:class:`~modelmill.errors.ArtifactIntegrityError` naming the file. Then the class is made again from its
source (``cls()``: no arguments; its state comes from ``load``), its artifacts are unpacked into a folder
of their own and ``load(context)`` is called with ``context.artifacts`` (name -> ``Path``). Libraries the
code imports must be installed where it is served; only the class's own file is bundled.

``options``: ``artifacts`` (name -> path), ``task`` (``binary``, ``regression``, ``multiclass``,
``multi_output``; by default ``binary`` when the signature's one output is ``probability``, else
``regression``) and ``classes`` (a multiclass model's class names, in its columns' order).

    >>> import pathlib, tempfile
    >>> from modelmill.registry.signature import Field, Signature
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "plus_one.py").write_text(
    ...     "class PlusOne:\\n"
    ...     "    def load(self, context):\\n        self.k = float(context.artifacts['k'].read_text())\\n"
    ...     "    def predict(self, frame):\\n        return frame['x'] + self.k\\n")
    >>> _ = (folder / "k.txt").write_text("1")
    >>> import importlib.util, sys
    >>> spec = importlib.util.spec_from_file_location("plus_one", folder / "plus_one.py")
    >>> mod = sys.modules["plus_one"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    >>> sig = Signature(inputs=[Field("x")], outputs=[Field("y")])
    >>> data = PythonFlavor().dump(mod.PlusOne(), sig, {"artifacts": {"k": folder / "k.txt"}})
    >>> PythonFlavor().load(data, sig, name="p", version=1, sha256="").predict(np.array([[2.0]])).tolist()
    [3.0]
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import shutil
import tempfile
import types
import weakref
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelmill.errors import ArtifactIntegrityError, InputError
from modelmill.registry.flavors import FLAVORS, TASKS, Flavor, Predict, _frame_predict
from modelmill.registry.signature import Signature

__all__ = ["PythonContext", "PythonFlavor", "bundle_manifest"]

MANIFEST = "manifest.json"
_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class PythonContext:
    """What ``load(context)`` is given: the unpacked ``artifacts`` (name -> path), the signature and the
    bundle's recorded hashes."""

    artifacts: dict[str, Path]
    signature: Signature
    source_sha256: str
    bundle_sha256: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle_hash(files: Mapping[str, str], cls: str) -> str:
    """The hash of a bundle's contents: its class and every (path, sha256), in path order."""
    lines = [f"class {cls}", *(f"{path} {sha}" for path, sha in sorted(files.items()))]
    return _sha("\n".join(lines).encode())


def _artifact_files(name: str, path: Path) -> list[tuple[str, Path]]:
    """(path in the bundle, file) of one artifact: a file, or every file under a folder."""
    if not path.exists():
        raise InputError(f"options.artifacts.{name}", "names a path that does not exist", str(path))
    if path.is_file():
        return [(f"artifacts/{name}", path)]
    return [(f"artifacts/{name}/{p.relative_to(path).as_posix()}", p) for p in sorted(path.rglob("*")) if p.is_file()]


def _check_name(name: Any) -> str:
    parts = PurePosixPath(str(name)).parts
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in parts or "\\" in name:
        raise InputError("options.artifacts", "names must be relative names without '..'", name)
    return name


def bundle_manifest(data: bytes) -> dict[str, Any]:
    """The manifest of a ``python`` bundle, checked: every file's sha256 and the bundle's hash (an
    :class:`ArtifactIntegrityError` naming the file that differs)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except (KeyError, ValueError):
            raise InputError("artifact", "is not a modelmill python bundle (no readable manifest.json)") from None
        files: dict[str, str] = manifest.get("files") or {}
        present = set(zf.namelist()) - {MANIFEST}
        for path in sorted(present - set(files)):
            raise ArtifactIntegrityError(f"bundle:{path}", "(not in the manifest)", _sha(zf.read(path)))
        for path, expected in sorted(files.items()):
            actual = _sha(zf.read(path)) if path in present else "(missing)"
            if actual != expected:
                raise ArtifactIntegrityError(f"bundle:{path}", expected, actual)
    actual = _bundle_hash(files, str(manifest.get("class")))
    if actual != manifest.get("bundle_sha256") or files.get(manifest.get("source", "")) != manifest.get(
            "source_sha256"):
        raise ArtifactIntegrityError("bundle:manifest.json", str(manifest.get("bundle_sha256")), actual)
    return dict(manifest)


class PythonFlavor(Flavor):
    """Your own class with ``load(context)`` and ``predict(frame)``, bundled with its source and artifacts."""

    name = "python"
    extension = "zip"

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        opts = dict(options or {})
        cls = model if isinstance(model, type) else type(model)
        for method in ("load", "predict"):
            if not callable(getattr(cls, method, None)):
                raise InputError("model", f"flavor 'python' needs a class with load(context) and predict(frame); "
                                 f"{cls.__name__} has no {method}()", cls.__name__)
        if "<locals>" in cls.__qualname__:
            raise InputError("model", "must be a class defined at the top level of a module (its source is "
                             "bundled and the class made again from it)", cls.__qualname__)
        try:
            source_file = inspect.getsourcefile(cls)
        except TypeError:
            source_file = None
        if source_file is None or not Path(source_file).is_file():
            raise InputError("model", "must be a class defined in a .py file (its source is bundled); "
                             f"{cls.__qualname__} has none", cls.__module__)
        task = opts.get("task", "binary" if signature.output_names == ["probability"] else "regression")
        if task not in TASKS:
            raise InputError("options.task", f"must be one of {', '.join(TASKS)}", task)
        classes = opts.get("classes") or []
        if task == "multiclass" and (not isinstance(classes, list) or len(classes) < 2):
            raise InputError("options.classes", "a multiclass python model needs its class names, in the order "
                             "of its predict columns", classes)
        artifacts = opts.get("artifacts") or {}
        if not isinstance(artifacts, Mapping):
            raise InputError("options.artifacts", "must map a name to a file or folder path", artifacts)
        module = Path(source_file).stem
        entries: dict[str, bytes] = {f"code/{module}.py": Path(source_file).read_bytes()}
        for name, path in artifacts.items():
            for where, file in _artifact_files(_check_name(name), Path(path)):
                entries[where] = file.read_bytes()
        files = {path: _sha(data) for path, data in entries.items()}
        class_ref = f"{module}:{cls.__qualname__}"
        manifest = {"format": _FORMAT, "class": class_ref, "source": f"code/{module}.py",
                    "source_sha256": files[f"code/{module}.py"], "artifacts": sorted(str(n) for n in artifacts),
                    "task": task, "classes": [str(c) for c in classes], "files": files,
                    "bundle_sha256": _bundle_hash(files, class_ref)}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            for path, data in sorted(entries.items()):
                info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))  # the same code: the same bytes
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        return buf.getvalue()

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        manifest = bundle_manifest(data)
        folder = Path(tempfile.mkdtemp(prefix=f"modelmill-python-{manifest['bundle_sha256'][:12]}-"))
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for path in manifest["files"]:
                target = folder / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(path))
        module_name, qualname = str(manifest["class"]).split(":", 1)
        source = (folder / manifest["source"]).read_text(encoding="utf-8")
        # A module of its own per bundle: two versions of one file never share (or overwrite) their classes.
        module = types.ModuleType(f"modelmill_python_{manifest['bundle_sha256'][:16]}_{module_name}")
        module.__file__ = str(folder / manifest["source"])
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # the bundle was verified above
        target_cls: Any = module
        for part in qualname.split("."):
            target_cls = getattr(target_cls, part)
        instance = target_cls()
        try:  # the unpacked folder goes when the model does
            weakref.finalize(instance, shutil.rmtree, folder, True)
        except TypeError:  # a class whose instances take no weak reference: the folder stays until reboot
            pass
        context = PythonContext(
            artifacts={name: folder / "artifacts" / name for name in manifest["artifacts"]},
            signature=signature, source_sha256=manifest["source_sha256"], bundle_sha256=manifest["bundle_sha256"])
        instance.load(context)
        n_out = len(manifest["classes"]) if manifest["task"] == "multiclass" else None

        def score(frame: Any) -> np.ndarray:
            out = np.asarray(instance.predict(frame), dtype=np.float64)
            if n_out is not None:
                if out.ndim != 2 or out.shape[1] != n_out:
                    raise ValueError(f"predict returned shape {out.shape}; a multiclass model answers "
                                     f"[n, {n_out}] (one column per class)")
                return out
            return out.reshape(len(out)) if out.ndim == 2 and out.shape[1] == 1 else out

        opts: dict[str, Any] = {"task": manifest["task"], "source_sha256": manifest["source_sha256"],
                                "bundle_sha256": manifest["bundle_sha256"], "artifacts_dir": str(folder)}
        if manifest["task"] == "multiclass":
            opts["classes"] = list(manifest["classes"])
        return _frame_predict(score, signature), instance, opts


FLAVORS["python"] = PythonFlavor()
