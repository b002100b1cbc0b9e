"""Aliases: movable names for a version (``production``, ``challenger``, ``shadow``, ``canary`` or your own).

Every change is written to the audit trail with who made it, when and why;
:class:`AliasChange` is one line of that history.

    >>> check_alias("production")
    'production'
    >>> check_alias("3")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: alias: an alias is 1-64 lowercase letters, digits, '_' or '-', starting with a letter (got 3)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from modelmill.errors import InputError

__all__ = ["STANDARD_ALIASES", "AliasChange", "check_alias"]

STANDARD_ALIASES = ("canary", "challenger", "production", "shadow")

_ALIAS = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")


def check_alias(alias: Any) -> str:
    """``alias`` if valid; it must start with a letter so that it never reads as a version number."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InputError("alias", "an alias is 1-64 lowercase letters, digits, '_' or '-', starting with a letter",
                         alias)
    return alias


@dataclasses.dataclass(frozen=True, kw_only=True)
class AliasChange:
    """One alias move: ``version`` is None when the alias was deleted, ``previous`` None when it was new."""

    at: float
    actor: str
    name: str
    alias: str
    version: int | None
    previous: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
