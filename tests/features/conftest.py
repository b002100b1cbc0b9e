"""Fixtures of the feature store tests: a FeatureStore over each online backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelmill.features import FeatureStore
from modelmill.project import Project
from modelmill.store.kv import RedisKV


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(project: Project, backend: str, request: pytest.FixtureRequest) -> Iterator[FeatureStore]:
    """A FeatureStore whose online store is the project's SQLite file, or real Redis under a test prefix."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        kv = RedisKV(url, prefix=prefix)
        fs = FeatureStore(project, online=kv)
        yield fs
        fs.close()
        kv.close()
    else:
        fs = FeatureStore(project)
        yield fs
        fs.close()
