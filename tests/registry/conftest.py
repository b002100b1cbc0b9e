"""Registry fixtures: a small real classification problem and a registry on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache


@pytest.fixture(scope="session")
def classification() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3,000 train / 2,000 test rows, 6 features, a fixed seed."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=5000, n_features=6, n_informative=4, n_redundant=1, random_state=7)
    return X[:3000], y[:3000], X[3000:], y[3000:]


@pytest.fixture
def signature6() -> Signature:
    return Signature(inputs=[Field(f"f{i}", "float64") for i in range(6)], outputs=[Field("probability")])


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    settings = Settings.defaults(home=tmp_path / ".modelmill")
    if request.param == "postgresql":
        settings = settings.replace(db=request.getfixturevalue("pg_url"))
    project = Project(settings)
    clear_cache()
    yield Registry(project)
    project.close()
    clear_cache()


@pytest.fixture
def sqlite_registry(project: Project) -> Iterator[Registry]:
    clear_cache()
    yield Registry(project)
    clear_cache()
