"""Versions, resolution, verified loading and the in-process cache, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelmill.errors import ArtifactIntegrityError, InputError, NotFoundError
from modelmill.registry import Registry, Signature


def _fit(classification: tuple[np.ndarray, ...], C: float = 1.0) -> LogisticRegression:
    X, y, _, _ = classification
    return LogisticRegression(C=C).fit(X, y)


def test_versions_are_numbered_per_name(registry: Registry, classification, signature6: Signature) -> None:
    model = _fit(classification)
    a1 = registry.register("a", model, flavor="sklearn", signature=signature6, metrics={"auc": 0.9})
    a2 = registry.register("a", model, flavor="sklearn", signature=signature6, run_id="r1",
                           lineage={"training_set": "s3://x/train.parquet"}, tags={"team": "risk"})
    b1 = registry.register("b", model, flavor="sklearn", signature=signature6)
    assert (a1.version, a2.version, b1.version) == (1, 2, 1)
    got = registry.get("a", 2)
    assert got.run_id == "r1" and got.lineage == {"training_set": "s3://x/train.parquet"}
    assert got.tags == {"team": "risk"} and got.signature == signature6
    assert registry.get("a", 1).metrics == {"auc": 0.9}
    assert got.sha256 == a2.sha256 and len(got.sha256) == 64 and got.size > 0
    assert [m.name for m in registry.models()] == ["a", "b"]
    assert [v.version for v in registry.versions("a")] == [1, 2]


def test_resolve_by_number_alias_and_name(registry: Registry, classification, signature6: Signature) -> None:
    model = _fit(classification)
    for _ in range(3):
        registry.register("m", model, flavor="sklearn", signature=signature6)
    registry.set_alias("m", "production", 2, actor="ann", reason="best auc")
    assert registry.resolve("m@3").version == 3
    assert registry.resolve("m").version == 3
    prod = registry.resolve("m@production")
    assert prod.version == 2 and prod.aliases == ("production",)
    with pytest.raises(NotFoundError, match="versions 1 to 3"):
        registry.resolve("m@7")
    with pytest.raises(NotFoundError, match=r"production->2"):
        registry.resolve("m@canary")
    with pytest.raises(NotFoundError, match="modelmill models list"):
        registry.resolve("nope")
    with pytest.raises(InputError, match="NAME@VERSION"):
        registry.resolve("m@1@2")


def test_load_predicts_positive_class_probability(registry: Registry, classification, signature6: Signature) -> None:
    model = _fit(classification)
    _, _, Xt, _ = classification
    mv = registry.register("m", model, flavor="sklearn", signature=signature6)
    loaded = registry.load(mv)
    assert (loaded.name, loaded.version, loaded.flavor) == ("m", 1, "sklearn")
    assert loaded.signature.input_names == [f"f{i}" for i in range(6)]
    np.testing.assert_allclose(loaded.predict(Xt), model.predict_proba(Xt)[:, 1])
    assert loaded.predict(Xt[0]).shape == (1,)
    assert registry.load(mv) is loaded  # cached per process
    with pytest.raises(InputError, match=r"\[n, 6\]"):
        loaded.predict(Xt[:, :5])


def test_one_changed_byte_refuses_to_load(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    registry = sqlite_registry
    mv = registry.register("m", _fit(classification), flavor="sklearn", signature=signature6)
    file = Path(registry.project.settings.artifacts) / mv.artifact_path
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        registry.load(mv)
    message = str(info.value)
    assert "m@1 refuses to load" in message and "tampered" in message and mv.sha256[:12] in message
    assert info.value.context["model"] == "m" and info.value.context["version"] == 1


def test_bad_input_is_named(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    model = _fit(classification)
    with pytest.raises(InputError, match="flavor"):
        sqlite_registry.register("m", model, flavor="pickle", signature=signature6)
    with pytest.raises(InputError, match="name"):
        sqlite_registry.register("bad/name", model, flavor="sklearn", signature=signature6)
    with pytest.raises(InputError, match=r"metrics\.auc"):
        sqlite_registry.register("m", model, flavor="sklearn", signature=signature6, metrics={"auc": float("nan")})
    with pytest.raises(InputError, match="lightgbm"):
        sqlite_registry.register("m", model, flavor="lightgbm", signature=signature6)
    # nothing half-registered
    assert sqlite_registry.models() == []


def test_gate_decision_is_recorded_on_the_version(registry: Registry, classification, signature6: Signature
                                                  ) -> None:
    mv = registry.register("m", _fit(classification), flavor="sklearn", signature=signature6)
    registry.record_gate(mv, {"accepted": False, "reasons": ["auc 0.61 < min 0.70"]})
    assert registry.get("m", 1).gate == {"accepted": False, "reasons": ["auc 0.61 < min 0.70"]}
