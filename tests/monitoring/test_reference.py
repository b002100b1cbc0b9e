"""Reference profiles: computed once, stored as a checked artifact plus an index row (SQLite and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from modelmill.config import Settings
from modelmill.errors import ArtifactIntegrityError, NotFoundError
from modelmill.monitoring import ReferenceProfile, ReferenceStore
from modelmill.monitoring.reference import PREDICTION_COLUMN
from modelmill.project import Project


def _roundtrip(project: Project) -> None:
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(size=40_000), "c": rng.choice(list("abc"), 40_000), "k": rng.integers(0, 3, 40_000)}
    store = ReferenceStore(project)
    profile = store.compute("flights", 2, data, predictions=rng.random(40_000), max_points=5000)
    assert store.exists("flights", 2) and not store.exists("flights", 3)
    loaded = store.load("flights", 2)
    assert loaded.kinds == {"x": "numeric", "c": "categorical", "k": "categorical", PREDICTION_COLUMN: "numeric"}
    assert np.array_equal(loaded.columns["x"].values, profile.columns["x"].values)
    assert list(loaded.columns["c"].keys) == ["a", "b", "c"] and loaded.columns["c"].counts.sum() == 40_000
    assert loaded.columns["x"].n == 40_000 and len(loaded.columns["x"].values) == 5000
    current = {"x": rng.normal(0.5, 1, 3000), "c": rng.choice(list("abc"), 3000), "k": rng.integers(0, 3, 3000)}
    rep = loaded.compare(current, predictions=rng.random(3000))
    assert rep.drifted == ["x"] and set(rep.columns) == {"x", "c", "k", PREDICTION_COLUMN}
    assert [v["version"] for v in store.versions("flights")] == [2]
    with pytest.raises(NotFoundError):
        store.load("flights", 9)


def test_reference_roundtrip_sqlite(project: Project) -> None:
    _roundtrip(project)


def test_reference_roundtrip_postgres(settings: Settings, pg_url: str) -> None:
    with Project(settings.replace(db=pg_url)) as project:
        _roundtrip(project)


def test_tampered_reference_is_refused(project: Project) -> None:
    store = ReferenceStore(project)
    store.save("m", 1, ReferenceProfile.from_data({"x": np.arange(100.0)}))
    path = project.artifacts._full(store.artifact_path("m", 1))
    with open(path, "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactIntegrityError):
        store.load("m", 1)
