"""What the server needs from a model and from where models come from.

The registry's ``LoadedModel`` and ``Registry`` fit these protocols as they
are; :class:`StaticSource` serves models built in process (tests, notebooks):

    >>> import numpy as np
    >>> m = FunctionModel("double", 1, ["x"], lambda X: 2 * X[:, 0])
    >>> src = StaticSource([m], aliases={"double@production": 1})
    >>> src.load(src.resolve("double@production")).predict(np.array([[1.5]]))
    array([3.])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelmill.errors import InputError, NotFoundError

__all__ = [
    "Field",
    "FunctionModel",
    "ModelHandle",
    "ModelSource",
    "Signature",
    "StaticSource",
    "input_names",
    "parse_ref",
]


@dataclasses.dataclass(frozen=True)
class Field:
    """One input column of a signature."""

    name: str
    dtype: str = "float64"


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: list[Field]


@runtime_checkable
class ModelHandle(Protocol):
    """A loaded model version: ``predict`` maps ``[n, k]`` float rows to ``[n]`` outputs."""

    name: str
    version: int
    signature: Any  # has ``.inputs``: a list of objects with ``.name`` and ``.dtype``

    def predict(self, X: np.ndarray) -> np.ndarray: ...


class ModelSource(Protocol):
    """Where the server resolves references and loads versions (the registry's ``Registry`` is one)."""

    def resolve(self, ref: str) -> Any: ...

    def load(self, model_version: Any) -> Any: ...


def input_names(model: ModelHandle) -> list[str]:
    """The model's input columns, in the order ``predict`` expects them."""
    return [f.name for f in model.signature.inputs]


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"name@alias"`` -> ``("name", "alias")``; ``"name"`` -> ``("name", None)``."""
    if not isinstance(ref, str) or not ref or ref.count("@") > 1:
        raise InputError("model", "must be NAME, NAME@ALIAS or NAME@VERSION", ref)
    name, _, target = ref.partition("@")
    if not name:
        raise InputError("model", "must be NAME, NAME@ALIAS or NAME@VERSION", ref)
    return name, (target or None)


class FunctionModel:
    """A model made of a function; for tests, examples and wrappers."""

    def __init__(
        self,
        name: str,
        version: int,
        inputs: Sequence[str],
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        lineage: Mapping[str, Any] | None = None,
        dtypes: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        kinds = dict(dtypes or {})
        self.signature = Signature([Field(n, kinds.get(n, "float64")) for n in inputs])
        self.lineage = dict(lineage or {})
        self.options = dict(options or {})  # as a flavor's: "categories" of string columns
        self._fn = fn

    def __repr__(self) -> str:
        return f"FunctionModel({self.name!r}, {self.version})"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``fn(X)`` as ``[n]`` float64 (a model with string columns gets an object matrix holding them)."""
        return np.asarray(self._fn(X), dtype=np.float64).reshape(len(X))


@dataclasses.dataclass(frozen=True)
class _StaticVersion:
    name: str
    version: int
    lineage: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class _StaticModel:
    name: str
    latest_version: int


class StaticSource:
    """An in-process source: models added by hand, aliases changed with :meth:`set_alias`."""

    def __init__(self, models: Iterable[ModelHandle] = (), *, aliases: Mapping[str, int] | None = None) -> None:
        self._models: dict[tuple[str, int], ModelHandle] = {}
        self._aliases: dict[str, int] = dict(aliases or {})
        for m in models:
            self.add(m)

    def add(self, model: ModelHandle, *, aliases: Sequence[str] = ()) -> None:
        self._models[(model.name, int(model.version))] = model
        for alias in aliases:
            self.set_alias(model.name, alias, int(model.version))

    def models(self) -> list[_StaticModel]:
        """Every model name with its newest version (as the registry's ``models()``)."""
        latest: dict[str, int] = {}
        for n, v in self._models:
            latest[n] = max(v, latest.get(n, v))
        return [_StaticModel(n, latest[n]) for n in sorted(latest)]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._aliases[f"{name}@{alias}"] = version

    def resolve(self, ref: str) -> _StaticVersion:
        name, target = parse_ref(ref)
        versions = sorted(v for (n, v) in self._models if n == name)
        if not versions:
            raise NotFoundError("model", name)
        if target is None:
            version = versions[-1]
        elif target.isdigit():
            version = int(target)
        elif ref in self._aliases:
            version = self._aliases[ref]
        else:
            raise NotFoundError("alias", ref)
        model = self._models.get((name, version))
        if model is None:
            raise NotFoundError("model version", f"{name}@{version}")
        return _StaticVersion(name, version, dict(getattr(model, "lineage", {}) or {}))

    def load(self, model_version: Any) -> ModelHandle:
        return self._models[(model_version.name, int(model_version.version))]
