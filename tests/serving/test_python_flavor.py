"""The ``python`` flavor: your own class, bundled with its source and artifacts, registered through the registry
and served by a real ``modelmill serve`` (which imports nothing of it but the bundle); a tampered bundle is
refused, naming what differs."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from modelmill.config import load_settings
from modelmill.errors import ArtifactIntegrityError, InputError
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache
from modelmill.registry.python_flavor import PythonFlavor, bundle_manifest
from modelmill.store.tables.registry import model_versions
from tests.serving.conftest import ServeProcess, free_port

# Pre-processing (a city's weight from an artifact, a unit from another), the model (weight * x), and
# post-processing (clipped to [0, 10], rounded to cents): nothing a bare estimator does.
SOURCE = '''
import json


class CityPricer:
    def load(self, context):
        self.weights = json.loads((context.artifacts["tables"] / "weights.json").read_text())
        self.unit = float(context.artifacts["unit.txt"].read_text())
        self.sha = context.source_sha256

    def predict(self, frame):
        w = frame["city"].str.strip().str.lower().map(self.weights).fillna(0.0)
        return (w * frame["x"] * self.unit).clip(0.0, 10.0).round(2)
'''
WEIGHTS = {"oslo": 2.0, "rome": 0.5, "tokyo": 3.0}
SIG = Signature(inputs=[Field("city", "string"), Field("x", "float64")], outputs=[Field("price", "float64")])


def expected(cities: list[str], x: list[float]) -> list[float]:
    out = []
    for c, v in zip(cities, x, strict=True):
        out.append(round(min(max(WEIGHTS.get(c.strip().lower(), 0.0) * v * 1.5, 0.0), 10.0), 2))
    return out


class Bundle:
    def __init__(self, root: Path, code: Path, mv: Any) -> None:
        self.root, self.code, self.mv = root, code, mv

    def project(self) -> Project:
        return Project(load_settings(cwd=self.root))


def _user_class(code: Path) -> Any:
    """The user's class, imported from a folder the server never sees."""
    spec = importlib.util.spec_from_file_location("city_pricer", code / "city_pricer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["city_pricer"] = module
    spec.loader.exec_module(module)
    return module.CityPricer


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Bundle]:
    code = tmp_path / "usercode"  # outside the project: the server can only get the class from the bundle
    (code / "tables").mkdir(parents=True)
    (code / "city_pricer.py").write_text(SOURCE)
    (code / "tables" / "weights.json").write_text(json.dumps(WEIGHTS))
    (code / "unit.txt").write_text("1.5")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\ncache = false\n')
    clear_cache()
    project = Project(load_settings(cwd=root))
    try:
        mv = Registry(project).register("pricer", _user_class(code)(), flavor="python", signature=SIG, options={
            "artifacts": {"tables": code / "tables", "unit.txt": code / "unit.txt"}})
    finally:
        project.close()
        sys.modules.pop("city_pricer", None)
    clear_cache()
    yield Bundle(root, code, mv)
    clear_cache()


def _artifact(b: Bundle) -> Path:
    [path] = list(b.root.rglob("model.zip"))
    return path


def test_the_bundle_records_the_source_and_every_artifact_by_hash(bundle: Bundle) -> None:
    assert bundle.mv.flavor == "python"
    manifest = bundle_manifest(_artifact(bundle).read_bytes())
    source_sha = hashlib.sha256((bundle.code / "city_pricer.py").read_bytes()).hexdigest()
    assert manifest["class"] == "city_pricer:CityPricer" and manifest["source_sha256"] == source_sha
    assert manifest["files"] == {
        "code/city_pricer.py": source_sha,
        "artifacts/tables/weights.json": hashlib.sha256((bundle.code / "tables/weights.json").read_bytes()).hexdigest(),
        "artifacts/unit.txt": hashlib.sha256(b"1.5").hexdigest()}
    project = bundle.project()
    try:
        model = Registry(project).load(bundle.mv)
    finally:
        project.close()
    assert model.options["source_sha256"] == source_sha and model.raw.sha == source_sha  # load(context) saw it
    X = np.array([["Oslo ", 2.0], ["rome", 4.0], ["paris", 1.0], ["tokyo", 9.0]], dtype=object)
    assert model.predict(X).tolist() == expected(["Oslo ", "rome", "paris", "tokyo"], [2.0, 4.0, 1.0, 9.0])


@pytest.mark.slow  # a modelmill serve process
def test_modelmill_serve_answers_with_the_bundled_code(bundle: Bundle) -> None:
    grpc_port = free_port()
    proc = ServeProcess(bundle.root, "--model", "pricer@1", "--grpc-port", str(grpc_port))
    try:
        proc.wait_ready()
        cities, x = ["oslo", " TOKYO", "nowhere", "rome"], [1.25, 2.0, 3.0, 30.0]
        body = {"inputs": [{"name": "city", "datatype": "BYTES", "shape": [4], "data": cities},
                           {"name": "x", "datatype": "FP64", "shape": [4], "data": x}]}
        r = httpx.post(f"{proc.url}/v2/models/pricer/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == expected(cities, x)  # 30 * 0.5 * 1.5 = 22.5 is clipped to 10
        cfg = httpx.get(f"{proc.url}/v2/models/pricer/config", timeout=10).json()
        assert cfg["backend"] == "python" and cfg["parameters"]["sha256"]["string_value"] == bundle.mv.sha256
        bad = httpx.post(f"{proc.url}/v2/models/pricer/infer", timeout=10, json={
            "inputs": [{"name": "city", "datatype": "FP64", "shape": [1], "data": [1.0]},
                       {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]})
        assert bad.status_code == 400 and "city" in bad.json()["error"]
        _tritonclient(proc, grpc_port, cities, x)
    finally:
        proc.stop()


def _tritonclient(proc: ServeProcess, grpc_port: int, cities: list[str], x: list[float]) -> None:
    """The python-flavour model through tritonclient, over HTTP and gRPC: metadata, infer, config, stats."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    for mod, client in ((httpclient, httpclient.InferenceServerClient(url=proc.url.removeprefix("http://"))),
                        (grpcclient, grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}"))):
        try:
            meta = client.get_model_metadata("pricer")
            inputs = meta["inputs"] if isinstance(meta, dict) else [
                {"name": i.name, "datatype": i.datatype} for i in meta.inputs]
            assert [(i["name"], i["datatype"]) for i in inputs] == [("city", "BYTES"), ("x", "FP64")]
            t_city = mod.InferInput("city", [len(cities)], "BYTES")
            t_city.set_data_from_numpy(np.array([c.encode() for c in cities], dtype=object))
            t_x = mod.InferInput("x", [len(x)], "FP64")
            t_x.set_data_from_numpy(np.asarray(x))
            assert client.infer("pricer", [t_city, t_x]).as_numpy("output").tolist() == expected(cities, x)
            cfg = client.get_model_config("pricer")
            backend = cfg["backend"] if isinstance(cfg, dict) else cfg.config.backend
            assert backend == "python"
            stats = client.get_inference_statistics("pricer")
            count = stats["model_stats"][0]["inference_count"] if isinstance(stats, dict) else \
                stats.model_stats[0].inference_count
            assert count >= len(cities)
        finally:
            client.close()


def _rezip(data: bytes, change: dict[str, bytes]) -> bytes:
    """The bundle with some files' bytes replaced and its manifest left as it was."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, change.get(name, src.read(name)))
    return out.getvalue()


def test_a_bundle_whose_hash_differs_is_refused_even_when_the_record_was_changed_too(bundle: Bundle) -> None:
    path = _artifact(bundle)
    original = path.read_bytes()
    project = bundle.project()
    try:
        # 1. the artifact changed under its record: the registry's own check refuses it
        path.write_bytes(_rezip(original, {"artifacts/unit.txt": b"1000"}))
        with pytest.raises(ArtifactIntegrityError, match="pricer@1 refuses to load"):
            Registry(project).load(bundle.mv, cache=False)
        # 2. the record's sha256 rewritten to match: the bundle's manifest still names what differs
        for change, where in (({"artifacts/unit.txt": b"1000"}, "bundle:artifacts/unit.txt"),
                              ({"code/city_pricer.py": SOURCE.replace("0.0, 10.0", "0.0, 1e9").encode()},
                               "bundle:code/city_pricer.py")):
            tampered = _rezip(original, change)
            path.write_bytes(tampered)
            with project.db.begin() as conn:
                conn.execute(sa.update(model_versions).where(model_versions.c.name == "pricer").values(
                    sha256=hashlib.sha256(tampered).hexdigest()))
            clear_cache()
            with pytest.raises(ArtifactIntegrityError) as err:
                Registry(project).load("pricer@1", cache=False)
            assert err.value.path == where and "tampered with" in err.value.message
        # 3. a manifest rewritten for a changed file no longer matches the bundle's recorded hash
        with zipfile.ZipFile(io.BytesIO(original)) as zf:
            manifest = json.loads(zf.read("manifest.json"))
        manifest["files"]["artifacts/unit.txt"] = hashlib.sha256(b"1000").hexdigest()
        forged = _rezip(original, {"artifacts/unit.txt": b"1000", "manifest.json": json.dumps(manifest).encode()})
        with pytest.raises(ArtifactIntegrityError) as err:
            PythonFlavor().load(forged, SIG, name="pricer", version=1, sha256="")
        assert err.value.path == "bundle:manifest.json"
    finally:
        project.close()


def test_what_the_flavor_cannot_bundle_is_refused_naming_the_field(tmp_path: Path) -> None:
    flavor = PythonFlavor()

    class Local:
        def load(self, context: Any) -> None: ...

        def predict(self, frame: Any) -> Any: ...

    with pytest.raises(InputError, match="top level of a module"):
        flavor.dump(Local(), SIG)
    with pytest.raises(InputError, match=r"object has no load\(\)"):
        flavor.dump(object(), SIG)
    (tmp_path / "usercode").mkdir()
    (tmp_path / "usercode" / "city_pricer.py").write_text(SOURCE)
    cls = _user_class(tmp_path / "usercode")
    try:
        with pytest.raises(InputError) as err:
            flavor.dump(cls(), SIG, {"artifacts": {"unit.txt": tmp_path / "absent.txt"}})
        assert err.value.field == "options.artifacts.unit.txt"
        with pytest.raises(InputError) as err:
            flavor.dump(cls(), SIG, {"artifacts": {"../up": tmp_path}})
        assert err.value.field == "options.artifacts"
        with pytest.raises(InputError) as err:
            flavor.dump(cls(), SIG, {"task": "multiclass"})
        assert err.value.field == "options.classes"
    finally:
        sys.modules.pop("city_pricer", None)


def test_the_flavor_contract(tmp_path: Path) -> None:
    from modelmill.testing.flavors import check_flavor

    (tmp_path / "linear.py").write_text(
        "class Linear:\n"
        "    def load(self, context):\n"
        "        self.w = [float(v) for v in context.artifacts['w'].read_text().split()]\n"
        "    def predict(self, frame):\n"
        "        return sum(frame[f'f{i}'] * w for i, w in enumerate(self.w))\n")
    (tmp_path / "w.txt").write_text("2 -1 0.5")
    spec = importlib.util.spec_from_file_location("linear", tmp_path / "linear.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules["linear"] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        X = np.random.default_rng(4).normal(size=(6, 3))
        check_flavor("python", module.Linear(), X, X @ [2.0, -1.0, 0.5], options={"artifacts": {"w": tmp_path / "w.txt"}})
    finally:
        sys.modules.pop("linear", None)
