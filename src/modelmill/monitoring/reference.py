"""Reference statistics: computed once per model version, stored, compared against every window.

A :class:`ReferenceProfile` keeps, per column, what the drift tests need —
a quantile sketch of at most ``max_points`` sorted values (with the exact count,
standard deviation and number of distinct values) for a numeric column,
category counts for a categorical one. It is written to the artifact store
(``monitoring/references/<model>/<version>.npz``, sha256 checked on read) and
indexed in the ``monitoring_references`` table, so a monitoring window never
rescans the training set.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> profile = ReferenceProfile.from_data({"x": rng.normal(size=50_000)}, max_points=1000)
    >>> len(profile.columns["x"].values), profile.columns["x"].n
    (1000, 50000)
    >>> ReferenceProfile.from_bytes(profile.to_bytes()).columns["x"].n
    50000
    >>> profile.compare({"x": rng.normal(1.0, size=2000)}).columns["x"].drift
    True
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from modelmill.errors import InputError, NotFoundError
from modelmill.monitoring.drift import (
    ColumnSummary,
    DataLike,
    DriftOptions,
    DriftReport,
    column_names,
    compare,
    summarize,
)
from modelmill.project import Project
from modelmill.store.tables.monitoring import monitoring_references

__all__ = ["PREDICTION_COLUMN", "ReferenceProfile", "ReferenceStore"]

# The model's own output is profiled under this name, so prediction drift is one more column.
PREDICTION_COLUMN = "__prediction__"
DEFAULT_MAX_POINTS = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ReferenceProfile:
    """Per-column summaries of a reference dataset (a model version's training data)."""

    columns: dict[str, ColumnSummary]
    n_rows: int

    @classmethod
    def from_data(cls, data: DataLike, *, predictions: Any = None, columns: Sequence[str] | None = None,
                  options: DriftOptions | None = None, max_points: int = DEFAULT_MAX_POINTS) -> ReferenceProfile:
        """Summarise ``data`` (and the model's outputs on it, if given) in one pass per column."""
        cols = summarize(data, columns=columns, options=options, max_points=max_points)
        if predictions is not None:
            cols.update(summarize({PREDICTION_COLUMN: np.asarray(predictions, dtype=np.float64)},
                                  kinds={PREDICTION_COLUMN: "numeric"}, max_points=max_points))
        n_rows = max((c.n for c in cols.values()), default=0)
        return cls(columns=cols, n_rows=n_rows)

    @property
    def kinds(self) -> dict[str, str]:
        return {name: c.kind for name, c in self.columns.items()}

    def compare(self, current: DataLike, *, predictions: Any = None, options: DriftOptions | None = None,
                columns: Sequence[str] | None = None) -> DriftReport:
        """Drift of a current window against this reference (columns in both)."""
        present = set(column_names(current))
        wanted = [c for c in (columns or self.columns) if c in present and c in self.columns]
        cur = summarize(current, columns=wanted, kinds=self.kinds)  # type: ignore[arg-type]
        if predictions is not None and PREDICTION_COLUMN in self.columns:
            cur.update(summarize({PREDICTION_COLUMN: np.asarray(predictions, dtype=np.float64)},
                                 kinds={PREDICTION_COLUMN: "numeric"}))
        ref = {k: v for k, v in self.columns.items() if k in cur}
        return compare(ref, cur, options)

    # ---- serialisation: one .npz, arrays per column plus a JSON header -----------------------

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        header: list[dict[str, Any]] = []
        for i, (name, c) in enumerate(self.columns.items()):
            header.append({"name": name, "kind": c.kind, "n": c.n, "std": c.std, "n_unique": c.n_unique})
            if c.values is not None:
                arrays[f"v{i}"] = c.values
            if c.keys is not None and c.counts is not None:
                arrays[f"k{i}"] = np.asarray(c.keys, dtype=str)
                arrays[f"c{i}"] = c.counts
        arrays["header"] = np.frombuffer(json.dumps({"n_rows": self.n_rows, "columns": header}).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes())
            cols: dict[str, ColumnSummary] = {}
            for i, h in enumerate(header["columns"]):
                cols[h["name"]] = ColumnSummary(
                    kind=h["kind"], n=int(h["n"]), std=float(h["std"]), n_unique=int(h["n_unique"]),
                    values=npz.get(f"v{i}", None),
                    keys=npz.get(f"k{i}", None),
                    counts=npz.get(f"c{i}", None),
                )
        return cls(columns=cols, n_rows=int(header["n_rows"]))


class ReferenceStore:
    """Reference profiles per model version: artifact bytes plus an index row in the metadata DB."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"ReferenceStore({self.project!r})"

    @staticmethod
    def artifact_path(model: str, version: int) -> str:
        return f"monitoring/references/{model}/{int(version)}.npz"

    def save(self, model: str, version: int, profile: ReferenceProfile) -> str:
        """Store ``profile`` for ``model`` version ``version`` (replacing any earlier one)."""
        if not model or "/" in model or ".." in model:
            raise InputError("model", "must be a model name without '/'", model)
        path = self.artifact_path(model, version)
        ref = self.project.artifacts.put_bytes(path, profile.to_bytes())
        row = {"model": model, "version": int(version), "artifact_path": path, "sha256": ref.sha256,
               "n_rows": profile.n_rows, "columns": profile.kinds, "created_at": time.time()}
        t = monitoring_references
        with self.project.db.begin() as conn:
            conn.execute(t.delete().where(t.c.model == model, t.c.version == int(version)))
            conn.execute(t.insert().values(**row))
            self.project.db.audit(conn, actor="monitoring", action="reference.save", subject=f"{model}@{version}",
                                  detail={"n_rows": profile.n_rows, "columns": len(profile.columns)})
        return path

    def compute(self, model: str, version: int, data: DataLike, *, predictions: Any = None,
                columns: Sequence[str] | None = None, options: DriftOptions | None = None,
                max_points: int = DEFAULT_MAX_POINTS) -> ReferenceProfile:
        """Summarise a model version's training data (once, at registration) and store it."""
        profile = ReferenceProfile.from_data(data, predictions=predictions, columns=columns, options=options,
                                             max_points=max_points)
        self.save(model, version, profile)
        return profile

    def exists(self, model: str, version: int) -> bool:
        t = monitoring_references
        with self.project.db.engine.connect() as conn:
            return conn.execute(sa.select(t.c.model).where(t.c.model == model, t.c.version == int(version))
                                ).first() is not None

    def load(self, model: str, version: int) -> ReferenceProfile:
        t = monitoring_references
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.model == model, t.c.version == int(version))).first()
        if row is None:
            raise NotFoundError("reference profile", f"{model}@{version}",
                                "compute it with ReferenceStore(project).compute(model, version, training_data)")
        return ReferenceProfile.from_bytes(self.project.artifacts.get_bytes(row.artifact_path, sha256=row.sha256))

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        t = monitoring_references
        q = sa.select(t.c.model, t.c.version, t.c.n_rows, t.c.created_at).order_by(t.c.model, t.c.version)
        if model is not None:
            q = q.where(t.c.model == model)
        with self.project.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]
