"""Reference statistics: computed once per model version, stored, compared against every window.

A :class:`ReferenceProfile` keeps, per column, what the drift tests need —
a quantile sketch of at most ``max_points`` sorted values (with the exact count,
standard deviation and number of distinct values) for a numeric column,
category counts for a categorical one. It is written to the artifact store
(``monitoring/references/<model>/<version>.npz``, sha256 checked on read) and
indexed in the ``monitoring_references`` table, so a monitoring window never
rescans the training set.

Profiles are made without code: :meth:`ReferenceStore.ensure` is the one place
that makes a version's profile, and the registry calls it when a version is
registered (from the training data it was given, else from the training set its
lineage names) and when it is promoted (``production`` set by ``models alias``,
the HTTP alias route or a rollout finishing). It never raises: a version whose
profile cannot be made is logged and left without one, and ``monitor`` reports
its drift as no data. ``modelmill reference NAME@V --data FILE`` covers the rest.

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
import hashlib
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from modelmill.errors import InputError, ModelmillError, NotFoundError
from modelmill.monitoring.drift import (
    ColumnSummary,
    DataLike,
    DriftOptions,
    DriftReport,
    column_names,
    compare,
    summarize,
)
from modelmill.monitoring.importance import Importance, permutation_importance
from modelmill.project import Project
from modelmill.store.tables.monitoring import monitoring_references

if TYPE_CHECKING:
    from modelmill.registry.versions import ModelVersion

__all__ = ["AUTO_MAX_ROWS", "PREDICTION_COLUMN", "ProfileOutcome", "ReferenceProfile", "ReferenceStore",
           "prediction_columns"]

log = logging.getLogger("modelmill.monitoring")

# The model's own output is profiled under this name, so prediction drift is one more column.
PREDICTION_COLUMN = "__prediction__"


def prediction_columns(predictions: Any) -> dict[str, np.ndarray]:
    """A model's outputs as the columns a profile holds: ``__prediction__`` for one output per row; one
    ``__prediction__[k]`` per column of a ``[n, C]`` output (a multiclass model's probability of class ``k``),
    so the predicted distribution drifts per class.

        >>> sorted(prediction_columns(np.array([[0.2, 0.8], [0.6, 0.4]])))
        ['__prediction__[0]', '__prediction__[1]']
    """
    out = np.asarray(predictions, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] > 1:
        return {f"{PREDICTION_COLUMN}[{k}]": np.ascontiguousarray(out[:, k]) for k in range(out.shape[1])}
    return {PREDICTION_COLUMN: out.reshape(len(out))}
DEFAULT_MAX_POINTS = 10_000
#: An automatic profile summarises (and predicts on) at most this many rows of the training data, drawn
#: with a fixed seed: registration stays quick, and the sketch keeps DEFAULT_MAX_POINTS values anyway.
AUTO_MAX_ROWS = 20_000


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ReferenceProfile:
    """Per-column summaries of a reference dataset (a model version's training data)."""

    columns: dict[str, ColumnSummary]
    n_rows: int
    #: Null statistics of calibrated thresholds (:func:`~modelmill.monitoring.drift.calibrate`), by
    #: :func:`~modelmill.monitoring.drift.calibration_key` (column, test, window size, windows, seed):
    #: filled by :meth:`compare` with ``calibrated`` options, stored with the profile, reused for any quantile.
    calibrations: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: Each input's share of the model's permutation importance (:mod:`~modelmill.monitoring.importance`),
    #: measured when the profile was made; None when it could not be (``importance_note`` says why).
    importance: dict[str, float] | None = None
    #: How ``importance`` was measured, or why there is none.
    importance_note: str = ""

    @classmethod
    def from_data(cls, data: DataLike, *, predictions: Any = None, columns: Sequence[str] | None = None,
                  options: DriftOptions | None = None, max_points: int = DEFAULT_MAX_POINTS,
                  kinds: Mapping[str, str] | None = None) -> ReferenceProfile:
        """Summarise ``data`` (and the model's outputs on it, if given) in one pass per column.

        ``kinds`` fixes columns' kinds (a logged window profiled as the training profile has them)."""
        cols = summarize(data, columns=columns, options=options, max_points=max_points,
                         kinds=kinds)  # type: ignore[arg-type]
        if predictions is not None:
            outputs = prediction_columns(predictions)
            cols.update(summarize(outputs, kinds=dict.fromkeys(outputs, "numeric"), max_points=max_points))
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
        if predictions is not None:
            outputs = {k: v for k, v in prediction_columns(predictions).items() if k in self.columns}
            if outputs:
                cur.update(summarize(outputs, kinds=dict.fromkeys(outputs, "numeric")))
        ref = {k: v for k, v in self.columns.items() if k in cur}
        return compare(ref, cur, options, calibrations=self.calibrations)

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
        keys = list(self.calibrations)
        for j, key in enumerate(keys):
            arrays[f"q{j}"] = np.asarray(self.calibrations[key], dtype=np.float64)
        arrays["header"] = np.frombuffer(json.dumps({"n_rows": self.n_rows, "columns": header,
                                                     "calibrations": keys, "importance": self.importance,
                                                     "importance_note": self.importance_note}).encode(),
                                         np.uint8)
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
            calibrations = {str(key): npz[f"q{j}"] for j, key in enumerate(header.get("calibrations", []))}
        importance = header.get("importance")
        note = str(header.get("importance_note") or "") if "importance" in header else (
            "the profile was made before modelmill stored feature importance with it")
        return cls(columns=cols, n_rows=int(header["n_rows"]), calibrations=calibrations,
                   importance={str(k): float(v) for k, v in importance.items()} if importance else None,
                   importance_note=note)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProfileOutcome:
    """What :meth:`ReferenceStore.ensure` did for a version.

    ``status``: ``stored`` (made from ``source`` now), ``kept`` (it had one), ``copied`` (from the version
    it was derived from), ``no_data`` (no training data known: ``reason`` says so) or ``failed`` (the data
    was found but the profile could not be made: ``reason`` has the error).
    """

    model: str
    version: int
    status: str
    source: str | None = None
    n_rows: int = 0
    reason: str | None = None


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

    def save_calibrations(self, model: str, version: int, profile: ReferenceProfile) -> str:
        """Store ``profile`` again with the calibrations it has gained, for the next window to reuse.

        The bytes go to a new path named by their digest and the index row moves to it in one
        transaction, so a reader never pairs the old digest with the new bytes; the earlier file is
        left in place (a stale copy a reader may still hold).
        """
        data = profile.to_bytes()
        path = f"monitoring/references/{model}/{int(version)}-{hashlib.sha256(data).hexdigest()[:12]}.npz"
        ref = self.project.artifacts.put_bytes(path, data)
        t = monitoring_references
        with self.project.db.begin() as conn:
            conn.execute(t.update().where(t.c.model == model, t.c.version == int(version))
                         .values(artifact_path=path, sha256=ref.sha256))
        return path

    def compute(self, model: str, version: int, data: DataLike, *, predictions: Any = None,
                columns: Sequence[str] | None = None, options: DriftOptions | None = None,
                max_points: int = DEFAULT_MAX_POINTS) -> ReferenceProfile:
        """Summarise a model version's training data (once, at registration) and store it.

        Without the model it measures no feature importance (:meth:`profile_version` does)."""
        profile = dataclasses.replace(
            ReferenceProfile.from_data(data, predictions=predictions, columns=columns, options=options,
                                       max_points=max_points),
            importance_note="made by ReferenceStore.compute, without the model: no permutation importance")
        self.save(model, version, profile)
        return profile

    def profile_version(self, mv: ModelVersion, data: Any, *, columns: Sequence[str] | None = None,
                        max_rows: int | None = None, field: str = "data", where: str | None = None) -> ReferenceProfile:
        """Profile ``data`` (a DataFrame or Arrow table of what ``mv`` was trained on) and store it.

        ``columns`` default to the signature's inputs; when every input is in ``data`` the model's outputs
        on it are profiled too (so prediction drift is checked). A column that is not there is an
        :class:`InputError` naming ``field`` (and ``where`` the data came from). ``max_rows`` draws that
        many rows with a fixed seed.
        """
        from modelmill.registry import Registry

        inputs = [f.name for f in mv.signature.inputs]
        cols = list(columns) if columns else inputs
        present = column_names(data)
        missing = [c for c in cols if c not in present]
        if missing:
            raise InputError(field, f"has no column {', '.join(missing)}; it has {', '.join(present)}", where)
        table = _as_table(data, [c for c in dict.fromkeys([*cols, *inputs]) if c in present], field)
        if max_rows is not None and table.num_rows > max_rows:
            keep = np.sort(np.random.default_rng(0).choice(table.num_rows, size=max_rows, replace=False))
            table = table.take(pa.array(keep))
        predictions = None
        importance: Importance | None = None
        note = "the training data lacks some of the model's inputs, so no permutation importance was measured"
        if inputs and all(c in table.column_names for c in inputs):
            frame = table.select(inputs).to_pandas()
            model = Registry(self.project).load(mv)
            predictions = model.predict(frame.to_numpy(dtype="float64"))
            importance, note = self._importance(mv, model, data, inputs)
        profile = ReferenceProfile.from_data(table.select(cols).to_pandas(), predictions=predictions)
        profile = dataclasses.replace(profile, importance=dict(importance.values) if importance else None,
                                      importance_note=importance.describe() if importance else note)
        self.save(mv.name, mv.version, profile)
        return profile

    @staticmethod
    def _importance(mv: ModelVersion, model: Any, data: Any, inputs: Sequence[str]) -> tuple[Importance | None, str]:
        """Permutation importance of ``mv``'s inputs: on the holdout its lineage names (``holdout_path``, a
        local file), else on the training data; against the label column its lineage names (``label``)
        where that data has it, else on how far the outputs move. Never raises: (None, why) instead."""
        lineage: Mapping[str, Any] = mv.lineage or {}
        source, frame = "the training data", data
        holdout = lineage.get("holdout_path")
        try:
            if isinstance(holdout, str) and Path(holdout).is_file():
                table = _read_file(Path(holdout))
                if all(c in table.column_names for c in inputs):
                    source, frame = f"the holdout {holdout}", table
            label = lineage.get("label")
            names = column_names(frame)
            y = None
            if isinstance(label, str) and label in names:
                y = _as_table(frame, [label], "data").column(label).to_numpy(zero_copy_only=False)
            X = _as_table(frame, list(inputs), "data").to_pandas()
            return permutation_importance(model.predict, X, y, source=source), ""
        except Exception as exc:  # importance weights drift; a failure leaves the raw share, said so
            return None, f"permutation importance on {source} failed ({type(exc).__name__}: {exc})"

    def ensure(self, mv: ModelVersion, *, data: Any = None, source: str | None = None,
               promoted: bool = False) -> ProfileOutcome:
        """Give ``mv`` a reference profile if it can have one; never raises (a failure is logged).

        With ``data`` (its training data) the profile is made from it, replacing any earlier one.
        Without, a version that has a profile keeps it; one that has none gets it from the training
        set named by ``source`` or by its lineage (``training_set``: an artifact URL or a local file;
        ``data_snapshot``: ``file:PATH#sha256=PREFIX``, as ``modelmill train`` records, read only while
        the file still has that digest), else a copy of the profile of the version it was
        ``derived_from``. Otherwise it stays without one, and ``monitor`` says its drift has no data
        (logged as a warning when the version is being ``promoted``, as information at registration).
        """
        name, version = mv.name, mv.version
        origin = "the training data it was registered with" if data is not None else "its training data"
        try:
            if data is None:
                if self.exists(name, version):
                    return ProfileOutcome(model=name, version=version, status="kept")
                origin, data, reason = self._training_data(mv, source)
                if data is None:
                    return self._copy_parent(mv) or self._none(mv, reason, promoted=promoted)
            profile = self.profile_version(mv, data, max_rows=AUTO_MAX_ROWS, field="training data")
        except Exception as exc:  # a profile is monitoring's help, never a reason to refuse a model
            reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.warning("no reference profile for %s@%s: making it from %s failed (%s); its drift is reported "
                        "as no data until `modelmill reference %s@%s --data FILE` makes one",
                        name, version, origin, reason, name, version)
            return ProfileOutcome(model=name, version=version, status="failed", source=origin or None,
                                  reason=reason)
        return ProfileOutcome(model=name, version=version, status="stored", source=origin, n_rows=profile.n_rows)

    def _copy_parent(self, mv: ModelVersion) -> ProfileOutcome | None:
        """A derived version (ONNX export, quantised, pruned, distilled) was trained on its parent's data."""
        parent = mv.lineage.get("derived_from")
        if not isinstance(parent, str) or "@" not in parent:
            return None
        p_name, _, p_version = parent.rpartition("@")
        if not (p_version.isascii() and p_version.isdigit()) or not self.exists(p_name, int(p_version)):
            return None
        profile = self.load(p_name, int(p_version))
        self.save(mv.name, mv.version, profile)
        return ProfileOutcome(model=mv.name, version=mv.version, status="copied", source=parent,
                              n_rows=profile.n_rows)

    @staticmethod
    def _none(mv: ModelVersion, reason: str, *, promoted: bool) -> ProfileOutcome:
        if promoted:
            log.warning("%s@%s is production without a reference profile (%s), so its drift is reported as no "
                        "data; make one: modelmill reference %s@%s --data TRAIN.parquet",
                        mv.name, mv.version, reason, mv.name, mv.version)
        else:
            log.info("no reference profile for %s@%s: %s", mv.name, mv.version, reason)
        return ProfileOutcome(model=mv.name, version=mv.version, status="no_data", reason=reason)

    def _training_data(self, mv: ModelVersion, source: str | None) -> tuple[str, pa.Table | None, str]:
        """(where from, the training data or None, why none) per the lineage of ``mv``."""
        lineage: Mapping[str, Any] = mv.lineage or {}
        training_set = source or lineage.get("training_set")
        if isinstance(training_set, str) and training_set:
            return f"training set {training_set}", self._read_training_set(training_set), ""
        snapshot = lineage.get("data_snapshot")
        if isinstance(snapshot, str) and snapshot.startswith("file:"):
            path, _, digest = snapshot.removeprefix("file:").partition("#sha256=")
            file = Path(path)
            if not file.is_file():
                return snapshot, None, f"its training data {path} is gone"
            if digest and not _sha256(file).startswith(digest):
                return snapshot, None, f"its training data {path} has changed since it was trained"
            return f"training data {path}", _read_file(file), ""
        return "", None, "its lineage names no training set (training_set or a file: data_snapshot)"

    def _read_training_set(self, where: str) -> pa.Table:
        artifacts = self.project.artifacts
        prefix = artifacts.url + "/"
        if where.startswith(prefix):  # a snapshot in the artifact store: read back with its digest checked
            path = where.removeprefix(prefix)
            return _read_bytes(artifacts.get_bytes(path), path)
        file = Path(where.removeprefix("file:").partition("#")[0])
        if file.is_file():
            return _read_file(file)
        raise NotFoundError("training set", where, "it is neither in this project's artifact store nor a local file")

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


def _as_table(data: Any, columns: Sequence[str], field: str) -> pa.Table:
    """Only ``columns`` of ``data`` as Arrow (the other columns of a training frame are never converted)."""
    if isinstance(data, pa.Table):
        return data.select(list(columns))
    if hasattr(data, "columns") and hasattr(data, "iloc"):  # a pandas DataFrame
        return pa.Table.from_pandas(data[list(columns)], preserve_index=False)
    if isinstance(data, Mapping):
        return pa.table({c: np.asarray(data[c]) for c in columns})
    raise InputError(field, "must be a pandas DataFrame, a pyarrow Table or a mapping of columns",
                     type(data).__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_bytes(data: bytes, name: str) -> pa.Table:
    if name.lower().endswith((".csv", ".csv.gz")):
        import pyarrow.csv as pacsv

        return pacsv.read_csv(io.BytesIO(data))
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def _read_file(path: Path) -> pa.Table:
    if path.suffix.lower() in (".csv", ".gz"):
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise ModelmillError(f"cannot read training data {path}: only .csv and .parquet files are read")
    import pyarrow.parquet as pq

    return pq.read_table(path)
