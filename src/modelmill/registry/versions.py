"""Model versions and the references that name them: ``name``, ``name@3`` or ``name@production``.

    >>> parse_ref("churn@production")
    ('churn', 'production')
    >>> parse_ref("churn@3")
    ('churn', 3)
    >>> parse_ref("churn")
    ('churn', None)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from modelmill.errors import InputError
from modelmill.registry.signature import Signature

__all__ = ["MAX_VERSION", "ModelVersion", "RegisteredModel", "check_model_name", "check_version", "parse_ref"]

# Matched with fullmatch: a pattern's "$" also matches before a final newline, so "evil\n" would pass.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
# ASCII digits only: str.isdigit() is true for "²" (which int() refuses) and for "٣" (which it reads as 3).
_DIGITS = re.compile(r"[0-9]{1,19}")
# The largest version a database integer column holds (SQLite INTEGER, PostgreSQL BIGINT).
MAX_VERSION = 2**63 - 1


def check_model_name(name: Any) -> str:
    """``name`` if it is a valid model name (letters, digits, ``_ . -``; at most 128 characters)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError("name", "a model name is 1-128 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit", name)
    return name


def check_version(value: Any, field: str = "version") -> int:
    """``value`` (an int, or a string of ASCII digits) as a version number from 1 to :data:`MAX_VERSION`.

    >>> check_version("3"), check_version(7)
    (3, 7)
    >>> check_version("²")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: version: must be a version number: ASCII digits, from 1 to 9223372036854775807 (got ²)
    """
    number = value
    if isinstance(value, str):
        number = int(value) if _DIGITS.fullmatch(value) else None
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise InputError(field, f"must be a version number: ASCII digits, from 1 to {MAX_VERSION}", value)
    return number


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """Split a model reference into its name and a version number, an alias, or None (the newest)."""
    if not isinstance(ref, str) or ref.count("@") > 1:
        raise InputError("model", "use NAME, NAME@VERSION or NAME@ALIAS", ref)
    name, sep, selector = ref.partition("@")
    check_model_name(name)
    if not sep:
        return name, None
    if selector.isascii() and selector.isdigit():
        return name, check_version(selector, "model")
    from modelmill.registry.aliases import check_alias

    return name, check_alias(selector)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One registered version of a model: where its artifact is, what it reads, where it came from.

    ``lineage`` is free-form JSON; the keys other stages read are ``training_set`` (the
    snapshot's path or URL), ``feature_definitions`` (their version), ``feature_service``
    and, for derived versions, ``derived_from`` (``name@version``) and ``derivation``.
    ``gate`` is the latest gate decision (see :func:`modelmill.registry.gate`).
    """

    name: str
    version: int
    flavor: str
    artifact_path: str
    sha256: str
    signature: Signature
    run_id: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    lineage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    created_at: float = 0.0
    size: int = 0
    gate: Mapping[str, Any] | None = None
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def __repr__(self) -> str:
        return f"ModelVersion({self.ref!r}, flavor={self.flavor!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "flavor": self.flavor,
            "artifact_path": self.artifact_path,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature.to_dict(),
            "run_id": self.run_id,
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "tags": dict(self.tags),
            "created_at": self.created_at,
            "gate": None if self.gate is None else dict(self.gate),
            "aliases": list(self.aliases),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisteredModel:
    """A model name with its newest version and its aliases."""

    name: str
    latest_version: int
    created_at: float
    updated_at: float
    aliases: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "latest_version": self.latest_version, "created_at": self.created_at,
                "updated_at": self.updated_at, "aliases": dict(self.aliases)}
