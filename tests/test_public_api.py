"""Every public surface keeps an __all__ whose names exist (httpx's rule).

Its order is enforced by ruff (RUF022: constants, then classes, then functions, each sorted).
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import modelmill

PACKAGES = sorted(
    {"modelmill"} | {f"modelmill.{m.name}" for m in pkgutil.iter_modules(modelmill.__path__) if m.ispkg and m.name != "cli"}
)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_resolvable(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which does not exist"
