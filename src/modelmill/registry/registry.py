"""The model registry: versions numbered per model, aliases with an audit trail, verified loads.

    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.registry import Field, Registry, Signature
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> reg = Registry(project)
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> mv = reg.register("demo", LogisticRegression().fit(X, y), flavor="sklearn",
    ...                   signature=Signature(inputs=[Field("x", "float64")]), metrics={"auc": 1.0})
    >>> mv.version
    1
    >>> reg.set_alias("demo", "production", 1, actor="ann", reason="first model")
    >>> reg.resolve("demo@production").version
    1
    >>> model = reg.load(reg.resolve("demo@production"))
    >>> model.predict(np.array([[0.0], [3.0]])).round(2).tolist()
    [0.19, 0.81]
    >>> project.close()
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelmill.errors import ArtifactIntegrityError, ConfigError, InputError, NotFoundError
from modelmill.events import emit
from modelmill.project import Project
from modelmill.registry.aliases import AliasChange, check_alias
from modelmill.registry.flavors import LoadedModel, task_of
from modelmill.registry.flavors import flavor as get_flavor
from modelmill.registry.signature import Signature
from modelmill.registry.versions import (
    ModelVersion,
    RegisteredModel,
    check_model_name,
    check_version,
    parse_ref,
)
from modelmill.store.tables import audit_log
from modelmill.store.tables.registry import model_aliases, model_versions, registered_models

if TYPE_CHECKING:
    from modelmill.monitoring.reference import ReferenceStore

__all__ = ["Registry", "clear_cache"]

_CACHE_SIZE = 32
_cache: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every loaded model of this process (the next ``load`` reads and verifies the artifact again)."""
    with _cache_lock:
        _cache.clear()


class Registry:
    """Model versions of one project. The constructor does no I/O."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"Registry({self.project!r})"

    # ---- versions ---------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: Any,
        *,
        flavor: str,
        signature: Signature | Mapping[str, Any],
        run_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
        lineage: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        actor: str = "api",
        training_data: Any = None,
    ) -> ModelVersion:
        """Store ``model`` and give it the next version number of ``name``.

        The artifact is written first under a unique path, then one short transaction
        takes the next number: an ``UPDATE`` of the model's row, which PostgreSQL
        row-locks and SQLite serialises, so concurrent registrations never share or
        skip a number. ``options`` go to the flavor (torch: ``output``, ``format``).
        Then the version gets its monitoring reference profile, from ``training_data``
        (a DataFrame or Arrow table) or else the training set ``lineage`` names; one
        that cannot be made is logged and never fails the registration.
        """
        check_model_name(name)
        fl = get_flavor(flavor)
        sig = signature if isinstance(signature, Signature) else Signature.from_dict(signature)
        clean_metrics = _metrics(metrics)
        clean_lineage = _json_dict(lineage, "lineage")
        clean_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if "task" not in clean_tags and "task" not in clean_lineage:
            clean_lineage.update(_recorded_task(model))
        if run_id is not None and not isinstance(run_id, str):
            raise InputError("run_id", "must be a string", run_id)
        data = fl.dump(model, sig, options)
        path = f"models/{name}/{uuid.uuid4().hex[:16]}/model.{fl.extension}"
        ref = self.project.artifacts.put_bytes(path, data)
        now = time.time()
        db = self.project.db
        with db.begin() as conn:
            conn.execute(_insert_ignore(db.dialect, name, now))
            version = conn.execute(
                registered_models.update()
                .where(registered_models.c.name == name)
                .values(latest_version=registered_models.c.latest_version + 1, updated_at=now)
                .returning(registered_models.c.latest_version)
            ).scalar_one()
            row = {
                "name": name, "version": version, "flavor": fl.name, "artifact_path": ref.path,
                "sha256": ref.sha256, "size": ref.size, "signature": sig.to_dict(), "run_id": run_id,
                "metrics": clean_metrics, "lineage": clean_lineage, "tags": clean_tags, "gate": None,
                "created_at": now,
            }
            conn.execute(model_versions.insert().values(**row))
            db.audit(conn, actor=actor, action="model.register", subject=f"model:{name}",
                     detail={"version": version, "flavor": fl.name, "sha256": ref.sha256, "run_id": run_id})
            emit(self.project, "model.register", {"model": name, "version": version, "flavor": fl.name,
                                                  "sha256": ref.sha256, "run_id": run_id},
                 subject=f"model:{name}", actor=actor, conn=conn)
        mv = _version(row, ())
        _reference(self.project).ensure(mv, data=training_data)
        return mv

    def get(self, name: str, version: int) -> ModelVersion:
        """Version ``version`` of ``name``; :class:`NotFoundError` with the versions that exist otherwise."""
        check_model_name(name)
        check_version(version)  # beyond a database integer, the query itself would fail
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(model_versions).where(
                model_versions.c.name == name, model_versions.c.version == version)).mappings().first()
            if row is None:
                raise NotFoundError("model version", f"{name}@{version}", self._hint(conn, name))
            return _version(row, self._aliases_of(conn, name, version))

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias``, ``name@3`` or ``name`` (the newest version) to a :class:`ModelVersion`."""
        name, selector = parse_ref(ref)
        if isinstance(selector, int):
            return self.get(name, selector)
        with self.project.db.engine.connect() as conn:
            if selector is None:
                version = conn.execute(sa.select(sa.func.max(model_versions.c.version))
                                       .where(model_versions.c.name == name)).scalar()
                if version is None:
                    raise NotFoundError("model", name, self._hint(conn, name))
            else:
                version = conn.execute(sa.select(model_aliases.c.version).where(
                    model_aliases.c.name == name, model_aliases.c.alias == selector)).scalar()
                if version is None:
                    known = self._alias_map(conn, name)
                    hint = (f"aliases of {name}: {', '.join(f'{a}->{v}' for a, v in sorted(known.items()))}"
                            if known else self._hint(conn, name) or f"{name} has no aliases yet")
                    raise NotFoundError("model alias", ref, hint)
        return self.get(name, int(version))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        check_model_name(name)
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(model_versions).where(model_versions.c.name == name)
                                .order_by(model_versions.c.version)).mappings().all()
            if not rows:
                raise NotFoundError("model", name, self._hint(conn, name))
            aliases = self._alias_map(conn, name)
        by_version: dict[int, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(v, []).append(alias)
        return [_version(r, tuple(sorted(by_version.get(r["version"], [])))) for r in rows]

    def models(self) -> list[RegisteredModel]:
        """Every registered model name with its newest version and aliases."""
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(registered_models).order_by(registered_models.c.name)).mappings().all()
            aliases: dict[str, dict[str, int]] = {}
            for a in conn.execute(sa.select(model_aliases)).mappings():
                aliases.setdefault(a["name"], {})[a["alias"]] = a["version"]
        return [RegisteredModel(name=r["name"], latest_version=r["latest_version"], created_at=r["created_at"],
                                updated_at=r["updated_at"], aliases=aliases.get(r["name"], {})) for r in rows]

    # ---- aliases ----------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "cli", reason: str = "") -> None:
        """Point ``name@alias`` at ``version``; the move is audited with ``actor`` and ``reason``.

        A version made ``production`` that has no reference profile gets one from its lineage's training
        set when it can (see :meth:`modelmill.monitoring.ReferenceStore.ensure`; never raises).
        """
        check_model_name(name)
        check_alias(alias)
        if isinstance(version, str):  # only ints: "3" is a caller's mistake here, not a version
            raise InputError("version", "must be an integer version number", version)
        check_version(version)
        now = time.time()
        with self.project.db.begin() as conn:
            self._lock_model(conn, name)
            exists = conn.execute(sa.select(model_versions.c.version).where(
                model_versions.c.name == name, model_versions.c.version == version)).first()
            if exists is None:
                raise NotFoundError("model version", f"{name}@{version}", self._hint(conn, name))
            previous = conn.execute(sa.select(model_aliases.c.version).where(
                model_aliases.c.name == name, model_aliases.c.alias == alias)).scalar()
            values = {"version": version, "updated_at": now, "updated_by": actor, "reason": reason}
            if previous is None:
                conn.execute(model_aliases.insert().values(name=name, alias=alias, **values))
            else:
                conn.execute(model_aliases.update().where(
                    model_aliases.c.name == name, model_aliases.c.alias == alias).values(**values))
            self.project.db.audit(conn, actor=actor, action="alias.set", subject=f"model:{name}",
                                  detail={"alias": alias, "version": version, "previous": previous, "reason": reason})
            emit(self.project, "alias.set", {"model": name, "alias": alias, "version": version, "previous": previous,
                                             "reason": reason}, subject=f"model:{name}", actor=actor, conn=conn)
        if alias == "production":
            _reference(self.project).ensure(self.get(name, version), promoted=True)

    def delete_alias(self, name: str, alias: str, *, actor: str = "cli", reason: str = "") -> None:
        """Remove ``name@alias``; audited like a move."""
        check_model_name(name)
        check_alias(alias)
        with self.project.db.begin() as conn:
            self._lock_model(conn, name)
            previous = conn.execute(sa.select(model_aliases.c.version).where(
                model_aliases.c.name == name, model_aliases.c.alias == alias)).scalar()
            if previous is None:
                raise NotFoundError("model alias", f"{name}@{alias}", "nothing to delete")
            conn.execute(model_aliases.delete().where(model_aliases.c.name == name, model_aliases.c.alias == alias))
            self.project.db.audit(conn, actor=actor, action="alias.delete", subject=f"model:{name}",
                                  detail={"alias": alias, "version": None, "previous": previous, "reason": reason})
            emit(self.project, "alias.delete", {"model": name, "alias": alias, "previous": previous, "reason": reason},
                 subject=f"model:{name}", actor=actor, conn=conn)

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of ``name`` and the versions they point at."""
        check_model_name(name)
        with self.project.db.engine.connect() as conn:
            return self._alias_map(conn, name)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Every alias move of ``name`` (or of ``name@alias``), oldest first: who, when, why."""
        check_model_name(name)
        if alias is not None:
            check_alias(alias)
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log).where(
                audit_log.c.subject == f"model:{name}", audit_log.c.action.in_(("alias.set", "alias.delete")))
                .order_by(audit_log.c.id)).mappings().all()
        out = []
        for r in rows:
            d = r["detail"] or {}
            if alias is not None and d.get("alias") != alias:
                continue
            out.append(AliasChange(at=r["at"], actor=r["actor"], name=name, alias=str(d.get("alias")),
                                   version=d.get("version"), previous=d.get("previous"),
                                   reason=str(d.get("reason", ""))))
        return out

    # ---- gate decisions ---------------------------------------------------------------------------

    def record_gate(self, mv: ModelVersion, decision: Mapping[str, Any], *, actor: str = "gate") -> ModelVersion:
        """Store the gate's decision on the version (the latest one wins; every one is audited)."""
        detail = _json_dict(decision, "decision")
        with self.project.db.begin() as conn:
            done = conn.execute(model_versions.update().where(
                model_versions.c.name == mv.name, model_versions.c.version == mv.version).values(gate=detail))
            if done.rowcount == 0:
                raise NotFoundError("model version", mv.ref)
            self.project.db.audit(conn, actor=actor, action="model.gate", subject=f"model:{mv.name}",
                                  detail={"version": mv.version, **detail})
            emit(self.project, "model.gate", {"model": mv.name, "version": mv.version, **detail},
                 subject=f"model:{mv.name}", actor=actor, conn=conn)
        return self.get(mv.name, mv.version)

    # ---- loading ----------------------------------------------------------------------------------

    def load(self, mv: ModelVersion | str, *, threads: int | None = None, cache: bool = True) -> LoadedModel:
        """The version's model, ready to predict; its artifact's sha256 is checked on the first load.

        Loaded models are cached per process by (artifact, sha256, threads), so serving
        loads each version once. A changed byte raises :class:`ArtifactIntegrityError`.
        """
        if isinstance(mv, str):
            mv = self.resolve(mv)
        table = self.project.settings.section("registry")
        if threads is None:
            configured = table.get("onnx_threads")
            threads = int(configured) if configured else None
        # the onnxruntime execution providers to try before the CPU, e.g. ["cuda", "cpu"] or ["tensorrt", "cuda"]
        providers = table.get("onnx_providers")
        if providers == [] or providers is None:
            providers = None
        elif isinstance(providers, str) or not isinstance(providers, list | tuple):
            raise ConfigError("registry.onnx_providers", providers, 'a list of provider names, e.g. ["cuda", "cpu"]')
        key = (self.project.artifacts.uri(mv.artifact_path), mv.sha256, threads,
               tuple(providers) if providers else None)
        if cache:
            with _cache_lock:
                hit = _cache.get(key)
                if hit is not None:
                    _cache.move_to_end(key)
                    return hit
        try:
            data = self.project.artifacts.get_bytes(mv.artifact_path, sha256=mv.sha256)
        except ArtifactIntegrityError as exc:
            exc.message = f"model {mv.ref} refuses to load: {exc.message}"
            exc.args = (exc.message,)
            exc.context.update(model=mv.name, version=mv.version)
            raise
        loaded = get_flavor(mv.flavor).load(data, mv.signature, name=mv.name, version=mv.version,
                                            sha256=mv.sha256, threads=threads, providers=providers)
        if cache:
            with _cache_lock:
                _cache[key] = loaded
                while len(_cache) > _CACHE_SIZE:
                    _cache.popitem(last=False)
        return loaded

    # ---- helpers ----------------------------------------------------------------------------------

    def _lock_model(self, conn: Connection, name: str) -> None:
        row = conn.execute(sa.select(registered_models.c.name).where(registered_models.c.name == name)
                           .with_for_update()).first()
        if row is None:
            raise NotFoundError("model", name, self._hint(conn, name))

    def _alias_map(self, conn: Connection, name: str) -> dict[str, int]:
        rows = conn.execute(sa.select(model_aliases.c.alias, model_aliases.c.version)
                            .where(model_aliases.c.name == name).order_by(model_aliases.c.alias)).all()
        return {r.alias: r.version for r in rows}

    def _aliases_of(self, conn: Connection, name: str, version: int) -> tuple[str, ...]:
        return tuple(a for a, v in self._alias_map(conn, name).items() if v == version)

    def _hint(self, conn: Connection, name: str) -> str:
        latest = conn.execute(sa.select(registered_models.c.latest_version)
                              .where(registered_models.c.name == name)).scalar()
        if latest is None:
            return "no model of that name is registered; see `modelmill models list`"
        return f"{name} has versions 1 to {latest}"


def _reference(project: Project) -> ReferenceStore:
    # Every registration and every promotion (models alias, the HTTP alias route, a rollout finishing) passes
    # here, so this is where a version gets the reference profile monitoring compares its traffic with. The
    # import is late: monitoring reads the registry, and the registry needs monitoring only for this.
    from modelmill.monitoring.reference import ReferenceStore

    return ReferenceStore(project)


def _recorded_task(model: Any) -> dict[str, Any]:
    """The task to record for a model whose task the default signature's one ``probability`` output would
    otherwise declare binary: ``multiclass`` (and its ``classes`` where they are numbers) for a classifier of
    more than two classes, ``regression`` for a scikit-learn-style regressor of one output. So their labels
    (class values or indices; any number) are taken and monitored as such. Nothing for anything else."""
    task, classes = task_of(model)
    if task == "multiclass":
        numeric = all(isinstance(c, numbers.Real) and type(c).__name__ not in ("bool", "bool_") for c in classes)
        return {"task": "multiclass", **({"classes": [float(c) for c in classes]} if numeric else {})}
    if task == "regression" and _is_regressor(model):
        return {"task": "regression"}
    return {}


def _is_regressor(model: Any) -> bool:
    try:
        from sklearn.base import is_regressor
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return False
    try:
        return bool(is_regressor(model))
    except Exception:  # an object scikit-learn cannot judge: no claim
        return False


def _insert_ignore(dialect: str, name: str, now: float) -> Any:
    values = {"name": name, "latest_version": 0, "created_at": now, "updated_at": now}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(registered_models).values(**values).on_conflict_do_nothing(index_elements=["name"])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(registered_models).values(**values).on_conflict_do_nothing(index_elements=["name"])


def _version(row: Any, aliases: tuple[str, ...]) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=int(row["version"]), flavor=row["flavor"], artifact_path=row["artifact_path"],
        sha256=row["sha256"], signature=Signature.from_dict(row["signature"]), run_id=row["run_id"],
        metrics=dict(row["metrics"] or {}), lineage=dict(row["lineage"] or {}), tags=dict(row["tags"] or {}),
        created_at=float(row["created_at"]), size=int(row["size"]), gate=row["gate"], aliases=aliases,
    )


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"metrics.{key}", "must be a number", value) from None
        if not math.isfinite(number):
            raise InputError(f"metrics.{key}", "must be finite", value)
        out[str(key)] = number
    return out


def _json_dict(value: Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    import json

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(field, "must be a mapping", value)
    try:
        return dict(json.loads(json.dumps(dict(value), default=str, allow_nan=False)))
    except ValueError as exc:
        raise InputError(field, f"must be JSON-serialisable ({exc})") from exc
