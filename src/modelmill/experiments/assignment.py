"""Deterministic sticky assignment: a unit always lands in the same variant of an experiment.

The hash is serving's :func:`modelmill.serving.bucket` and the split is serving's
:class:`~modelmill.serving.Route`, so a unit is assigned here exactly as the
router assigns its requests. Variants are taken in name order, the order in
which the router reads them back from the route table.

    >>> a = Assigner(variants=[("control", 50), ("treatment", 50)], salt="exp-1")
    >>> a.assign("user-42") == a.assign("user-42")
    True
    >>> counts = a.counts(f"user-{i}" for i in range(10_000))
    >>> sorted(counts), 4800 < counts["control"] < 5200
    (['control', 'treatment'], True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from modelmill.errors import InputError

__all__ = ["Assigner"]


class Assigner:
    """Maps unit ids to variant names by ``bucket(unit, salt)`` and the variants' weights."""

    def __init__(self, *, variants: Sequence[tuple[str, float]], salt: str) -> None:
        if not salt:
            raise InputError("salt", "must be a non-empty string (one per experiment)", salt)
        # Imported here so that the statistics load without the HTTP server's dependencies.
        from modelmill.serving import Route, Variant, bucket

        self.variants = tuple((str(n), float(w)) for n, w in variants)
        self.salt = salt
        self._bucket = bucket
        # The version is irrelevant to the split; the route only validates names and weights.
        self._route = Route("assignment", [Variant(n, 1, w) for n, w in sorted(self.variants)], salt)

    def __repr__(self) -> str:
        return f"Assigner(variants={list(self.variants)!r}, salt={self.salt!r})"

    def assign(self, unit_id: str) -> str:
        """The variant of ``unit_id``; the same on every call, process and release."""
        return self._route.pick(self._bucket(str(unit_id), self.salt)).name

    def assign_many(self, unit_ids: Iterable[str]) -> list[str]:
        return [self.assign(u) for u in unit_ids]

    def counts(self, unit_ids: Iterable[str]) -> dict[str, int]:
        """How many of ``unit_ids`` land in each variant (for a sample-ratio check before launch)."""
        return dict(Counter(self.assign_many(unit_ids)))
