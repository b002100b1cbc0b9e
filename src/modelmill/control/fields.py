"""Reading the fields of a JSON request body: each wrong one is an :class:`InputError` naming it.

A body arrives as a ``dict`` (see :func:`modelmill.serving.admin.parse_object`); these helpers take one
field out, check its type and range, and give the default when it is absent. ``null`` counts as absent
only where a field is ``nullable``.

    >>> body = {"version": 3, "plan": "shadow,100"}
    >>> integer(body, "version", minimum=1), string(body, "plan"), number(body, "stage_seconds", 60.0)
    (3, 'shadow,100', 60.0)
    >>> only(body, {"version"}, "a rollout")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: plan: is not a field of a rollout; the fields are version
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from modelmill.errors import InputError

__all__ = ["MAX_COUNT", "boolean", "integer", "number", "only", "string", "strings"]

#: The largest count a body may give (far below where a JSON integer stops being exact in a double).
MAX_COUNT = 10**12

_ABSENT = object()


def only(body: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    """Refuse a field ``body`` should not have (a typo would otherwise be ignored silently)."""
    names = sorted(allowed)
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise InputError(unknown[0], f"is not a field of {what}; the fields are {', '.join(names)}")


def _get(body: Mapping[str, Any], key: str, default: Any, nullable: bool) -> tuple[bool, Any]:
    """(True, the value) when ``body`` gives ``key``; (False, ``default``) when it is absent (or null and
    ``nullable``)."""
    value = body.get(key, _ABSENT)
    if value is _ABSENT or (value is None and nullable):
        if default is _ABSENT:
            raise InputError(key, "is required")
        return False, default
    return True, value


def string(body: Mapping[str, Any], key: str, default: Any = _ABSENT, *, max_length: int = 200,
           nullable: bool = False) -> Any:
    """A string of at most ``max_length`` characters."""
    given, value = _get(body, key, default, nullable)
    if not given:
        return value
    if not isinstance(value, str) or len(value) > max_length:
        raise InputError(key, f"must be a string of at most {max_length} characters", value)
    return value


def integer(body: Mapping[str, Any], key: str, default: Any = _ABSENT, *, minimum: int = 0,
            maximum: int = MAX_COUNT, nullable: bool = False) -> Any:
    """A JSON integer (not a boolean, not 3.0) from ``minimum`` to ``maximum``."""
    given, value = _get(body, key, default, nullable)
    if not given:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InputError(key, f"must be an integer from {minimum} to {maximum}", value)
    return value


def number(body: Mapping[str, Any], key: str, default: Any = _ABSENT, *, minimum: float = 0.0,
           maximum: float = math.inf, nullable: bool = False, exclusive: bool = False) -> Any:
    """A finite JSON number from ``minimum`` (above it with ``exclusive``) to ``maximum``, as a float."""
    given, value = _get(body, key, default, nullable)
    if not given:
        return value
    low = "above" if exclusive else "at least"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(key, f"must be a number {low} {minimum:g}", value)
    if value < minimum or (exclusive and value == minimum) or value > maximum:
        bound = f" and at most {maximum:g}" if math.isfinite(maximum) else ""
        raise InputError(key, f"must be a number {low} {minimum:g}{bound}", value)
    return float(value)


def boolean(body: Mapping[str, Any], key: str, default: Any = _ABSENT) -> Any:
    given, value = _get(body, key, default, False)
    if given and not isinstance(value, bool):
        raise InputError(key, "must be true or false", value)
    return value


def strings(body: Mapping[str, Any], key: str, *, max_items: int = 100, max_length: int = 200) -> list[str]:
    """An array of strings (absent: empty)."""
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > max_items:
        raise InputError(key, f"must be an array of at most {max_items} strings", value)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > max_length:
            raise InputError(f"{key}[{i}]", f"must be a non-empty string of at most {max_length} characters", item)
    return list(value)
