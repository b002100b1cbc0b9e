"""Every public surface keeps a sorted __all__ whose names exist (httpx's rule)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import modelmill

PACKAGES = sorted(
    {"modelmill"} | {f"modelmill.{m.name}" for m in pkgutil.iter_modules(modelmill.__path__) if m.ispkg and m.name != "cli"}
)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolvable(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which does not exist"
