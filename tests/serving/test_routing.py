"""Traffic routes: sticky bucketing, weighted picks, validation, persistence on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.config import Settings
from modelmill.errors import InputError, NotFoundError
from modelmill.project import Project
from modelmill.serving import Route, RouteTable, Variant, bucket
from modelmill.store.tables import audit_log


def test_bucket_is_stable_across_releases() -> None:
    # Fixed values: changing the hash would silently reshuffle every running A/B test.
    assert bucket("user-42", "flights") == pytest.approx(0.45871441910644517, abs=1e-15)
    assert bucket("", "") == pytest.approx(0.9618044850102755, abs=1e-15)


def test_bucket_is_uniform_and_salt_reshuffles() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    a = [bucket(k, "exp-a") for k in keys]
    b = [bucket(k, "exp-b") for k in keys]
    assert all(0.0 <= x < 1.0 for x in a)
    assert sum(x < 0.5 for x in a) / len(a) == pytest.approx(0.5, abs=0.02)
    assert sum(x < 0.1 for x in a) / len(a) == pytest.approx(0.1, abs=0.01)
    # another salt: membership of the lower half is independent of the first
    both = sum((x < 0.5) and (y < 0.5) for x, y in zip(a, b, strict=True)) / len(a)
    assert both == pytest.approx(0.25, abs=0.02)


def test_route_picks_by_weight_and_is_sticky() -> None:
    route = Route("m", [Variant("champion", "production", 90), Variant("canary", 7, 10),
                        Variant("shadow", 8, 0, shadow=True)])
    picks = Counter(route.pick(bucket(f"u{i}", route.salt)).name for i in range(10_000))
    assert set(picks) == {"champion", "canary"}
    assert picks["canary"] / 10_000 == pytest.approx(0.10, abs=0.015)
    assert [v.name for v in route.shadows] == ["shadow"]
    assert route.salt == "m"
    assert all(route.pick(bucket("u1", "m")) == route.pick(bucket("u1", "m")) for _ in range(5))
    assert route.pick(0.0).name == "champion"
    assert route.pick(0.999999).name == "canary"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": "", "version": 1}, "variant.name"),
    ({"name": "a", "version": 0}, "variant a: version"),
    ({"name": "a", "version": ""}, "variant a: version"),
    ({"name": "a", "version": 1, "weight": -1}, "variant a: weight"),
    ({"name": "a", "version": 1, "weight": float("nan")}, "variant a: weight"),
])
def test_variant_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        Variant(**kwargs)
    assert info.value.field == field


def test_route_needs_a_live_variant_and_unique_names() -> None:
    with pytest.raises(InputError, match="non-shadow"):
        Route("m", [Variant("s", 1, 1, shadow=True)])
    with pytest.raises(InputError, match="non-shadow"):
        Route("m", [Variant("a", 1, 0)])
    with pytest.raises(InputError, match="unique"):
        Route("m", [Variant("a", 1), Variant("a", 2)])


@pytest.fixture(params=["sqlite", "postgresql"])
def route_project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    settings = Settings.defaults(home=tmp_path / ".modelmill")
    if request.param == "postgresql":
        settings = settings.replace(db=request.getfixturevalue("pg_url"))
    project = Project(settings)
    request.addfinalizer(project.close)
    return project


def test_route_table_round_trip(route_project: Project) -> None:
    table = RouteTable(route_project)
    with pytest.raises(NotFoundError):
        table.get("flights")
    table.set("flights", [Variant("champion", "production", 0.9), Variant("canary", 4, 0.1),
                          Variant("shadow", "challenger", 0, shadow=True)], salt="exp-7", actor="test")
    route = table.get("flights")
    assert route.salt == "exp-7"
    assert {v.name: (v.version, v.weight, v.shadow) for v in route.variants} == {
        "champion": ("production", 0.9, False), "canary": (4, 0.1, False), "shadow": ("challenger", 0.0, True)}
    # a second set replaces the variants, it does not add to them
    table.set("flights", [Variant("only", 5)])
    assert [v.name for v in table.get("flights").variants] == ["only"]
    assert table.get("flights").salt == "flights"
    table.set("other", [Variant("a", 1)])
    assert sorted(table.all()) == ["flights", "other"]
    assert table.delete("flights") is True
    assert table.delete("flights") is False
    assert sorted(table.all()) == ["other"]
    with route_project.db.begin() as conn:
        actions = [r.action for r in conn.execute(sa.select(audit_log).where(audit_log.c.subject == "flights"))]
    assert actions == ["serving.route.set", "serving.route.set", "serving.route.delete"]


def test_route_table_refuses_an_invalid_route_without_writing(route_project: Project) -> None:
    table = RouteTable(route_project)
    table.set("m", [Variant("a", 1)])
    with pytest.raises(InputError):
        table.set("m", [Variant("s", 2, 1, shadow=True)])
    assert [v.name for v in table.get("m").variants] == ["a"]
