"""Batch prediction: score a Parquet or CSV file with a model version, chunk by chunk, locally or on Ray Data.

The output is the input's columns plus ``prediction`` (float64), rows in
input order, whichever engine ran it.

    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> from modelmill.serving.models import FunctionModel, StaticSource
    >>> src = StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0] * 10)])
    >>> d = tempfile.mkdtemp(); pq.write_table(pa.table({"id": [1, 2], "x": [0.5, 1.5]}), f"{d}/in.parquet")
    >>> predict_batch(src, "m", f"{d}/in.parquet", f"{d}/out.parquet")["rows"]
    2
    >>> pq.read_table(f"{d}/out.parquet").column("prediction").to_pylist()
    [5.0, 15.0]
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from modelmill.errors import InputError, NotFoundError

__all__ = ["ENGINES", "count_rows", "predict_batch"]

ENGINES = ("local", "ray")
Progress = Callable[[int], None]


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _unreadable(path: Path, exc: Exception) -> InputError:
    kind = "CSV" if _is_csv(path) else "Parquet"
    return InputError("input", f"{path} is not a {kind} file that can be read ({exc}); give a Parquet file, "
                      "or a CSV file ending in .csv", str(path))


def count_rows(path: str | os.PathLike[str]) -> int | None:
    """The rows of a Parquet input, from its footer; None for a CSV (known only once it is read)."""
    src = Path(path)
    if _is_csv(src):
        return None
    try:
        return int(pq.ParquetFile(src).metadata.num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(src, exc) from exc


def _read_batches(src: Path, chunk_rows: int) -> tuple[pa.Schema, Any]:
    """The input's schema and an iterator of its batches of at most ``chunk_rows`` rows."""
    try:
        if _is_csv(src):
            reader = pcsv.open_csv(src)
            return reader.schema, _rechunk(src, reader, chunk_rows)
        parquet = pq.ParquetFile(src)
        return parquet.schema_arrow, _rechunk(src, parquet.iter_batches(batch_size=chunk_rows), chunk_rows)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(src, exc) from exc


def _rechunk(src: Path, batches: Any, chunk_rows: int) -> Any:
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows)
    except (pa.ArrowException, OSError) as exc:  # a CSV whose later rows do not fit its first block's types
        raise _unreadable(src, exc) from exc


def _matrix(batch: pa.Table | pa.RecordBatch, columns: list[str]) -> np.ndarray:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise InputError("input", f"misses the model's column(s) {', '.join(missing)}", batch.schema.names)
    X = np.empty((batch.num_rows, len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        try:
            X[:, j] = batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise InputError(f"input.{c}", f"must be numeric ({batch.schema.field(c).type})") from exc
    return X


def _score(model: Any, columns: list[str], batch: pa.Table | pa.RecordBatch, out: str) -> pa.Table:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    y = np.asarray(model.predict(_matrix(table, columns)), dtype=np.float64).reshape(table.num_rows)
    if out in table.schema.names:
        table = table.drop_columns([out])
    return table.append_column(out, pa.array(y, pa.float64()))


# Models loaded by this (Ray worker) process, by loader key: each worker loads a version once.
_WORKER_MODELS: dict[Any, Any] = {}


def _ray_score(batch: pa.Table, *, load: Any, columns: list[str], out: str) -> pa.Table:
    """A Ray Data task (tasks, not actors: an actor pool can hold every CPU and starve the reads)."""
    model = _WORKER_MODELS.get(load.key)
    if model is None:
        model = _WORKER_MODELS[load.key] = load()
    return _score(model, columns, batch, out)


class _RegistryLoader:
    """Loads a registry version inside a Ray worker from the project's settings (picklable)."""

    def __init__(self, settings: Any, mv: Any) -> None:
        self.settings = settings
        self.mv = mv
        self.key = ("registry", str(settings.db), mv.name, int(mv.version), getattr(mv, "sha256", ""))

    def __call__(self) -> Any:
        from modelmill.project import Project
        from modelmill.registry import Registry

        return Registry(Project(self.settings)).load(self.mv)


class _Given:
    """Ships an in-process model itself (a model built in a notebook or a test)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.key = ("given", uuid.uuid4().hex)

    def __call__(self) -> Any:
        return self.model


def predict_batch(source: Any, ref: str, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
                  *, engine: str = "local", chunk_rows: int = 65_536, output_column: str = "prediction",
                  progress: Progress | None = None, ray_concurrency: int | None = None) -> dict[str, Any]:
    """Score ``input_path`` with version ``ref`` (``name@alias``) of ``source`` (a ``Registry``).

    ``progress(rows_done)`` is called after each chunk. Returns a summary
    (model, version, rows, seconds, engine, output).
    """
    if engine not in ENGINES:
        raise InputError("engine", f"must be one of {', '.join(ENGINES)}", engine)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InputError("chunk_rows", "must be a whole number of at least 1", chunk_rows)
    src, dst = Path(input_path), Path(output_path)
    if not src.exists():
        raise NotFoundError("input file", str(src))
    mv = source.resolve(ref)
    model = source.load(mv)
    columns = [f.name for f in model.signature.inputs]
    started = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if engine == "local":
            rows = _local(model, columns, src, tmp, chunk_rows, output_column, progress)
        else:
            project = getattr(source, "project", None)
            load = _RegistryLoader(project.settings, mv) if project is not None else _Given(model)
            rows = _ray(load, columns, src, tmp, chunk_rows, output_column, progress, ray_concurrency)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"model": str(mv.name), "version": int(mv.version), "engine": engine, "rows": rows,
            "seconds": round(time.perf_counter() - started, 3), "output": str(dst)}


def _local(model: Any, columns: list[str], src: Path, dst: Path, chunk_rows: int, out: str,
           progress: Progress | None) -> int:
    schema, batches = _read_batches(src, chunk_rows)
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for batch in batches:
            table = _score(model, columns, batch, out)
            if writer is None:
                writer = pq.ParquetWriter(dst, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
            if progress is not None:
                progress(rows)
        if writer is None:  # an empty input still gives a (empty) output with the right columns
            empty = schema.empty_table()
            table = _score(_Empty(), columns, empty, out)
            writer = pq.ParquetWriter(dst, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return rows


class _Empty:
    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.empty(0)


def _ray(load: Any, columns: list[str], src: Path, dst: Path, chunk_rows: int, out: str,
         progress: Progress | None, concurrency: int | None) -> int:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("engine", "'ray' needs the ray extra: pip install 'modelmill[ray]'") from exc
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the output keeps the input's row order
    _read_batches(src, chunk_rows)  # a clear error for an unreadable input, before Ray starts on it
    ds = ray.data.read_csv(str(src)) if _is_csv(src) else ray.data.read_parquet(str(src))
    fn: Any = _ray_score
    scored = ds.map_batches(fn, fn_kwargs={"load": load, "columns": columns, "out": out},
                            batch_format="pyarrow", batch_size=chunk_rows, concurrency=concurrency)
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            table: pa.Table = batch  # type: ignore[assignment]
            if writer is None:
                writer = pq.ParquetWriter(dst, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
            if progress is not None:
                progress(rows)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        _local(_Empty(), columns, src, dst, chunk_rows, out, None)
    return rows
