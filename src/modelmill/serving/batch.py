"""Batch prediction: score a Parquet or CSV file with a model version, chunk by chunk, locally or as Ray tasks.

The input is one Parquet or CSV file, or a folder of Parquet files (a data
set: its ``*.parquet`` files in name order). The output is the input's
columns plus ``prediction`` (float64), rows in input order, whichever engine
ran it. The Ray engine runs one Ray task per unit of about ``chunk_rows``
rows (a Parquet file's row groups, or a whole CSV file), in this process's Ray (started when there is
none) or on a cluster named by ``ray_address``: ``ray://HOST:PORT`` (Ray
Client) or ``HOST:PORT`` (the head's GCS, for a driver inside the cluster's
network); its summary says how many rows each node scored.

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
import socket
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

__all__ = ["ENGINES", "check_ray_address", "count_rows", "input_files", "predict_batch"]

ENGINES = ("local", "ray")
Progress = Callable[[int], None]


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of an input: itself, or a folder's ``*.parquet`` files in name order (none is an error)."""
    src = Path(path)
    if not src.is_dir():
        return [src]
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".parquet" and p.is_file())
    if not files:
        raise InputError("input", f"{src} is a folder without .parquet files; give a Parquet file, a CSV file "
                         "or a folder of Parquet files", str(src))
    return files


def check_ray_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``ray://HOST:PORT`` or ``HOST:PORT``; an :class:`InputError` naming ``address`` else."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("address", "must be ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS)", address)
    return host.strip("[]"), int(port)


def _unreadable(path: Path, exc: Exception) -> InputError:
    kind = "CSV" if _is_csv(path) else "Parquet"
    return InputError("input", f"{path} is not a {kind} file that can be read ({exc}); give a Parquet file, "
                      "or a CSV file ending in .csv", str(path))


def count_rows(path: str | os.PathLike[str]) -> int | None:
    """The rows of a Parquet input, from its footer; None for a CSV (known only once it is read)."""
    files = input_files(path)
    if _is_csv(files[0]):
        return None
    total = 0
    for src in files:
        try:
            total += int(pq.ParquetFile(src).metadata.num_rows)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(src, exc) from exc
    return total


def _read_batches(src: Path, chunk_rows: int) -> tuple[pa.Schema, Any]:
    """The input's schema and an iterator of its batches of at most ``chunk_rows`` rows (a folder's files in turn)."""
    files = input_files(src)
    if len(files) > 1:
        opened = [_read_batches(f, chunk_rows) for f in files]
        schema = opened[0][0]
        for f, (other, _) in zip(files, opened, strict=True):
            if not other.equals(schema):
                raise InputError("input", f"{f} has other columns or types than {files[0]}: the files of a data "
                                 "set share one schema", str(f))
        return schema, (batch for _, batches in opened for batch in batches)
    src = files[0]
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


def _units(files: list[Path], chunk_rows: int) -> list[tuple[str, list[int] | None]]:
    """The Ray engine's work units, in input order: a Parquet file's consecutive row groups of about
    ``chunk_rows`` rows (at least one group each), or a whole CSV file (``None``: no row groups)."""
    units: list[tuple[str, list[int] | None]] = []
    for f in files:
        if _is_csv(f):
            units.append((str(f), None))
            continue
        meta = pq.ParquetFile(f).metadata
        group: list[int] = []
        rows = 0
        for i in range(meta.num_row_groups):
            group.append(i)
            rows += meta.row_group(i).num_rows
            if rows >= chunk_rows:
                units.append((str(f), group))
                group, rows = [], 0
        if group or meta.num_row_groups == 0:
            units.append((str(f), group))
    return units


def _ray_score_unit(unit: tuple[str, list[int] | None], load: Any, columns: list[str], out: str,
                    chunk_rows: int) -> tuple[pa.Table | None, str]:
    """One Ray task: read a unit from the shared path, score it chunk by chunk; returns it and this node's id."""
    import ray

    path, groups = unit
    model = _WORKER_MODELS.get(load.key)
    if model is None:
        model = _WORKER_MODELS[load.key] = load()
    src = Path(path)
    if groups is None:
        _, batches = _read_batches(src, chunk_rows)
    else:
        batches = _rechunk(src, pq.ParquetFile(src).iter_batches(batch_size=chunk_rows, row_groups=groups),
                           chunk_rows)
    tables = [_score(model, columns, batch, out) for batch in batches]
    node = str(ray.get_runtime_context().get_node_id())
    return (pa.concat_tables(tables) if tables else None), node


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
                  progress: Progress | None = None, ray_concurrency: int | None = None,
                  ray_address: str | None = None) -> dict[str, Any]:
    """Score ``input_path`` with version ``ref`` (``name@alias``) of ``source`` (a ``Registry``).

    ``progress(rows_done)`` is called after each chunk. Returns a summary
    (model, version, rows, seconds, engine, output; the Ray engine adds
    ``nodes``: rows scored per Ray node id).
    """
    if engine not in ENGINES:
        raise InputError("engine", f"must be one of {', '.join(ENGINES)}", engine)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InputError("chunk_rows", "must be a whole number of at least 1", chunk_rows)
    if ray_address is not None:
        if engine != "ray":
            raise InputError("address", "names a Ray cluster: give it with the ray engine (--engine ray)",
                             ray_address)
        check_ray_address(ray_address)
    src, dst = Path(input_path), Path(output_path)
    if not src.exists():
        raise NotFoundError("input file", str(src))
    input_files(src)  # a folder without Parquet files is refused before the model loads
    mv = source.resolve(ref)
    model = source.load(mv)
    columns = [f.name for f in model.signature.inputs]
    started = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    nodes: dict[str, int] | None = None
    try:
        if engine == "local":
            rows = _local(model, columns, src, tmp, chunk_rows, output_column, progress)
        else:
            project = getattr(source, "project", None)
            load = _RegistryLoader(project.settings, mv) if project is not None else _Given(model)
            rows, nodes = _ray(load, columns, src, tmp, chunk_rows, output_column, progress, ray_concurrency,
                               ray_address)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    summary = {"model": str(mv.name), "version": int(mv.version), "engine": engine, "rows": rows,
               "seconds": round(time.perf_counter() - started, 3), "output": str(dst)}
    if nodes is not None:
        summary["nodes"] = nodes
    return summary


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


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (True: this call connected, so it disconnects), or this process's Ray."""
    if address is None:
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        return False
    host, port = check_ray_address(address)
    if ray.is_initialized():
        raise InputError("address", "this process is already connected to a Ray cluster; give no address to "
                         "use it, or score from a process of its own", address)
    try:  # ray.init retries an unreachable address for a minute: a closed port is said at once
        socket.create_connection((host, port), timeout=5.0).close()
    except OSError as exc:
        raise InputError("address", f"no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); start one "
                         "with `ray start --head` (its GCS port, or --ray-client-server-port for ray://)",
                         address) from exc
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError("address", f"could not join the Ray cluster at {address}: {exc}", address) from exc
    return True


def _ray(load: Any, columns: list[str], src: Path, dst: Path, chunk_rows: int, out: str,
         progress: Progress | None, concurrency: int | None, address: str | None) -> tuple[int, dict[str, int]]:
    """Score the input as Ray tasks, one per unit (:func:`_units`), spread over the cluster's nodes.

    At most ``concurrency`` units (default: twice the cluster's CPUs) are in flight, and their results are
    taken in input order, so the driver holds a bounded number of scored units and writes rows in order.
    Every node reads its units from the input's path: on a cluster of several machines, that path is on
    storage they share. A unit whose worker dies is retried by Ray (``max_retries``).
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("engine", "'ray' needs the ray extra: pip install 'modelmill[ray]'") from exc
    schema, _ = _read_batches(src, chunk_rows)  # a clear error for an unreadable input, before Ray starts on it
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputError("input", f"misses the model's column(s) {', '.join(missing)}", schema.names)
    units = _units(input_files(src), chunk_rows)
    connected = _connect(ray, address)
    writer: pq.ParquetWriter | None = None
    rows = 0
    nodes: dict[str, int] = {}
    try:
        window = concurrency or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_ray_score_unit)
        load_ref, columns_ref = ray.put(load), ray.put(columns)
        pending: list[Any] = []
        todo = iter(units)
        try:
            while True:
                for unit in todo:
                    pending.append(task.remote(unit, load_ref, columns_ref, out, chunk_rows))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                try:
                    table, node = ray.get(pending.pop(0))
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                    if isinstance(cause, InputError):
                        raise cause from None
                    raise
                if table is None:
                    continue
                nodes[node] = nodes.get(node, 0) + table.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(dst, table.schema, compression="zstd")
                writer.write_table(table)
                rows += table.num_rows
                if progress is not None:
                    progress(rows)
        finally:
            for ref in pending:  # an error midway: the units still running are cancelled
                ray.cancel(ref)
            if writer is not None:
                writer.close()
    finally:
        if connected:
            ray.shutdown()
    if writer is None:
        _local(_Empty(), columns, src, dst, chunk_rows, out, None)
    return rows, nodes
