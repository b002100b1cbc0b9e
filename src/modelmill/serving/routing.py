"""Traffic routes: which model versions answer for a model name, with what share of traffic.

A :class:`Route` holds the variants of one served model. Live variants split
traffic by weight; the split is sticky: a routing key (a user id, say) always
lands in the same variant, through :func:`bucket`, a stable hash into [0, 1).
Shadow variants receive a mirrored copy of every request, asynchronously,
and never answer. Routes live in the metadata database; serving workers poll
it, so :meth:`RouteTable.set` takes effect everywhere without a restart.

    >>> r = Route("flights", [Variant("a", 1, 0.5), Variant("b", 2, 0.5), Variant("s", 3, 0, shadow=True)])
    >>> r.pick(0.2).name, r.pick(0.7).name, [v.name for v in r.shadows]
    ('a', 'b', ['s'])
    >>> 0 <= bucket("user-42", "flights") < 1
    True
    >>> bucket("user-42", "flights") == bucket("user-42", "flights")
    True
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import InputError, NotFoundError
from modelmill.registry.aliases import check_alias
from modelmill.registry.versions import check_version
from modelmill.store.tables.serving import serving_routes

__all__ = ["Route", "RouteTable", "Variant", "bucket"]

_SCALE = float(1 << 64)


def bucket(routing_key: str, salt: str) -> float:
    """A stable position in [0, 1) for ``routing_key``; the same in every process and release.

    A different ``salt`` (one per experiment or route) reshuffles who lands where.
    """
    digest = hashlib.blake2b(f"{salt}\x1f{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a route: a model ``version`` (a number, or an alias such as ``"production"``)."""

    name: str
    version: int | str
    weight: float = 1.0
    shadow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 100:
            raise InputError("variant.name", "must be a non-empty string of at most 100 characters", self.name)
        if isinstance(self.version, bool) or not isinstance(self.version, int | str) or self.version in ("", 0):
            raise InputError(f"variant {self.name}: version", "must be a version number or an alias", self.version)
        # Checked as the registry checks them: a number that fits the database ("²" or 2**63 made the
        # store raise), or a well-formed alias; anything else could never resolve.
        field = f"variant {self.name}: version"
        if isinstance(self.version, int) or (self.version.isascii() and self.version.isdigit()):
            check_version(self.version, field)
        else:
            try:
                check_alias(self.version)
            except InputError as exc:
                raise InputError(field, f"must be a version number or an alias ({exc.problem})",
                                 self.version) from None
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not (w >= 0) or w == float("inf"):
            raise InputError(f"variant {self.name}: weight", "must be a finite number >= 0", w)

    @property
    def target(self) -> str:
        """How the registry is asked: ``"3"`` or ``"production"``."""
        return str(self.version)


@dataclasses.dataclass(frozen=True)
class Route:
    """The variants of one model; ``salt`` seeds the sticky hash (default: the model name)."""

    model: str
    variants: Sequence[Variant]
    salt: str = ""

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise InputError("variants", "variant names must be unique", names)
        if not any(not v.shadow and v.weight > 0 for v in self.variants):
            raise InputError("variants", "at least one non-shadow variant needs a weight above 0", names)
        if not self.salt:
            object.__setattr__(self, "salt", self.model)
        live = [v for v in self.variants if not v.shadow and v.weight > 0]
        total = sum(v.weight for v in live)
        edges, acc = [], 0.0
        for v in live:
            acc += v.weight / total
            edges.append(acc)
        edges[-1] = 1.0
        object.__setattr__(self, "_live", live)
        object.__setattr__(self, "_edges", edges)

    @property
    def live(self) -> list[Variant]:
        return list(self._live)  # type: ignore[attr-defined]

    @property
    def shadows(self) -> list[Variant]:
        return [v for v in self.variants if v.shadow]

    def pick(self, position: float) -> Variant:
        """The live variant owning ``position`` in [0, 1) (from :func:`bucket`)."""
        live: list[Variant] = self._live  # type: ignore[attr-defined]
        edges: list[float] = self._edges  # type: ignore[attr-defined]
        return live[min(bisect.bisect_right(edges, position), len(live) - 1)]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "salt": self.salt,
                "variants": [dataclasses.asdict(v) for v in self.variants]}


class RouteTable:
    """Routes persisted in the metadata database (table ``serving_routes``).

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> rt = RouteTable(p)
    >>> _ = rt.set("flights", [Variant("champion", "production", 90), Variant("canary", 4, 10)])
    >>> [v.name for v in rt.get("flights").variants]
    ['canary', 'champion']
    >>> p.close()
    """

    def __init__(self, project: Any) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"RouteTable({self.project!r})"

    def set(self, model: str, variants: Iterable[Variant], *, salt: str = "", actor: str = "api",
            reason: str = "") -> Route:
        """Replace the route of ``model`` (validated first; written in one transaction).

        The route returned lists its variants by name, the order :meth:`get` reads them back in
        and the order the sticky split is cut in, so ``set(...) == get(model)``.
        """
        route = Route(model, sorted(variants, key=lambda v: v.name), salt)
        now = time.time()
        db = self.project.db
        with db.begin() as conn:
            conn.execute(serving_routes.delete().where(serving_routes.c.model == model))
            conn.execute(serving_routes.insert(), [
                {"model": model, "variant": v.name, "target": v.target, "weight": float(v.weight),
                 "shadow": v.shadow, "salt": route.salt, "updated_at": now}
                for v in route.variants
            ])
            db.audit(conn, actor=actor, action="serving.route.set", subject=model,
                     detail={**route.as_dict(), "reason": reason})
        return route

    def delete(self, model: str, *, actor: str = "api", reason: str = "") -> bool:
        """Remove the route of ``model``; the server falls back to its configured reference."""
        db = self.project.db
        with db.begin() as conn:
            n = conn.execute(serving_routes.delete().where(serving_routes.c.model == model)).rowcount
            if n:
                db.audit(conn, actor=actor, action="serving.route.delete", subject=model, detail={"reason": reason})
        return bool(n)

    def get(self, model: str) -> Route:
        route = self.all().get(model)
        if route is None:
            raise NotFoundError("route", model, "set one with RouteTable.set(model, variants=[...])")
        return route

    def all(self) -> dict[str, Route]:
        """Every stored route by model name (one query; what the server's poll reads)."""
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(serving_routes).order_by(serving_routes.c.model,
                                                                   serving_routes.c.variant)).all()
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row.model, []).append(row)
        # Sorted here, not by the database: a PostgreSQL collation may order names differently.
        return {model: Route(model, [Variant(r.variant, _version(r.target), r.weight, bool(r.shadow))
                                     for r in sorted(rs, key=lambda r: r.variant)], rs[0].salt)
                for model, rs in grouped.items()}


def _version(target: str) -> int | str:
    return int(target) if target.isascii() and target.isdigit() else target
