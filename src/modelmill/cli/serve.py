"""``modelmill serve`` (the model server) and ``modelmill predict-batch`` (offline scoring)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import typer

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.errors import InputError

__all__ = ["predict_batch", "register", "serve"]

_APP = "modelmill.serving.app:app_from_env"


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command("predict-batch")(predict_batch)


def serve(
    refs: list[str] = typer.Argument(None, metavar="[NAME@ALIAS]...",
                                     help="Models to serve (the same as --model)."),
    model: list[str] = typer.Option([], "--model", "-m",
                                    help="NAME@ALIAS to serve (repeatable); models with a stored route are served too."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="TCP port."),
    grpc_port: int | None = typer.Option(None, min=1, max=65535,
                                         help="Also serve OIP over gRPC (KServe v2) on this port; each worker "
                                              "listens on it (SO_REUSEPORT)."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the models)."),
    max_batch_size: int | None = typer.Option(None, help="Rows per model call (micro-batching); 1 disables it."),
    max_wait_us: int | None = typer.Option(None, help="Longest wait for a batch to fill, in microseconds."),
    cache: bool | None = typer.Option(None, "--cache/--no-cache", help="Prediction cache (default: on)."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile",
                                        help="Evaluate plain linear scikit-learn models with numpy (default: on)."),
    log_predictions: bool | None = typer.Option(None, "--log-predictions/--no-log-predictions",
                                                help="Write every prediction to the offline store (default: on)."),
    auth: str | None = typer.Option(None, help="'control' (API tokens for routes and aliases; the default) or "
                                               "'required' (for predictions too); see modelmill token."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Serve models over the Open Inference Protocol v2 and the feature-backed predict route.

    With no model named (here or in [serving] models), every model with a stored route or a `production`
    alias is served; when there is none, it exits 2 and says how to name one.
    """
    import uvicorn

    from modelmill.security import MODES
    from modelmill.serving.app import GRPC_ENV, MODELS_ENV, OPTIONS_ENV
    from modelmill.serving.metrics import prepare_multiprocess_dir
    from modelmill.serving.models import parse_ref
    from modelmill.serving.protocol import UVICORN
    from modelmill.serving.supervisor import run_workers

    model = [*(refs or []), *model]
    for ref in model:
        parse_ref(ref)
    # A request's rows are few: OpenMP thread pools (scikit-learn's tree ensembles) cost far more to wake
    # than they save, and concurrent requests already keep every core busy. Measured on the demo's
    # HistGradientBoosting model, 40 concurrent requests: 10.6 ms each with the default pool, 0.65 ms with
    # one thread. Set before any worker loads OpenMP; MODELMILL_INFERENCE_THREADS overrides.
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("MODELMILL_INFERENCE_THREADS", "1"))
    if auth is not None and auth not in MODES:
        raise InputError("--auth", f"must be one of {', '.join(MODES)}", auth)
    if grpc_port is not None:
        if grpc_port == port:
            raise InputError("--grpc-port", "must differ from --port", grpc_port)
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise InputError("--grpc-port", "needs grpcio: pip install 'modelmill[serving]'", grpc_port) from None
        _check_free(host, grpc_port)
        # With several workers every one starts its own gRPC server on the port, shared with SO_REUSEPORT.
        os.environ[GRPC_ENV] = json.dumps({"host": host, "port": grpc_port, "reuse_port": workers > 1})
    else:
        os.environ.pop(GRPC_ENV, None)
    from modelmill.config import load_settings
    from modelmill.doctor import check_stores

    check_stores(load_settings())  # an unreachable object store: a ConfigError naming the key, before any worker
    served = model or default_models()
    os.environ[MODELS_ENV] = ",".join(served)
    options = {"max_batch_size": max_batch_size, "max_wait_us": max_wait_us, "cache": cache, "compile": compile,
               "log_predictions": log_predictions, "auth": auth}
    os.environ[OPTIONS_ENV] = json.dumps({k: v for k, v in options.items() if v is not None})
    if workers > 1:
        # Every worker writes its samples here; /metrics sums them (prometheus_client multiprocess mode).
        prepare_multiprocess_dir(tempfile.mkdtemp(prefix="modelmill-metrics-"))
    grpc_at = f", grpc {host}:{grpc_port}" if grpc_port is not None else ""
    err_console.print(f"modelmill serve: http://{host}:{port}{grpc_at} ({workers} worker{'s' if workers > 1 else ''}); "
                      f"serving {', '.join(served) or '[serving] models'} and every model with a stored route",
                      highlight=False, markup=False, soft_wrap=True)
    # uvloop, and httptools with a header-read timeout and a bounded drain (see modelmill.serving.protocol)
    if workers > 1:
        # uvicorn's supervisor, which also drops a dead worker's live gauges from /metrics
        run_workers(_APP, factory=True, host=host, port=port, workers=workers, log_level=log_level, **UVICORN)
    else:
        uvicorn.run(_APP, factory=True, host=host, port=port, log_level=log_level, **UVICORN)


def _check_free(host: str, port: int) -> None:
    """Refuse a ``--grpc-port`` something else listens on, before any worker starts (and fails on it)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.bind(address)
    except OSError as exc:
        raise InputError("--grpc-port", f"cannot listen on {host}:{port} ({exc.strerror or exc})", port) from None


def default_models() -> list[str]:
    """What ``serve`` serves when no model is named: ``NAME@production`` of every model with that alias.

    Empty when ``[serving] models`` names models or a route is stored (the server serves those); an
    :class:`InputError` when there is nothing at all to serve, rather than a server that serves nothing.
    """
    from modelmill.project import open_project
    from modelmill.registry import Registry
    from modelmill.serving import RouteTable

    with open_project() as project:
        configured = project.settings.section("serving").get("models")
        production = [f"{m.name}@production" for m in Registry(project).models() if "production" in m.aliases]
        if configured or production or RouteTable(project).all():
            return [] if configured else production
        registered = [m.name for m in Registry(project).models()]
    example = registered[0] if registered else "NAME"
    have = (f"registered models ({', '.join(registered)}) have no 'production' alias"
            if registered else "no model is registered (`modelmill train ... --register NAME`)")
    raise InputError("model", "nothing to serve: no model was named, none has a stored route and "
                     f"{have}; name one with `modelmill serve {example}@ALIAS` (or --model {example}@VERSION), "
                     f"or point its alias: `modelmill models alias {example} production VERSION`")


def predict_batch(
    model: str = typer.Option(..., "--model", "-m", help="NAME@ALIAS or NAME@VERSION."),
    input: Path = typer.Option(..., "--input", "-i", help="Parquet (or .csv) file, or a folder of .parquet files, with the model's columns."),
    output: Path = typer.Option(..., "--output", "-o", help="Parquet file to write (input + prediction)."),
    engine: str = typer.Option("local", help="'local' (this process) or 'ray' (Ray tasks, on --address or a Ray of its own)."),
    address: str | None = typer.Option(
        None, "--address",
        help="With --engine ray: the Ray cluster to run on, ray://HOST:PORT (Ray Client) or HOST:PORT (the head's "
             "GCS port, from a machine in the cluster); unset, a Ray of this process's own is started."),
    chunk_rows: int = typer.Option(65_536, help="Rows scored at a time."),
    as_json: bool = JsonOption,
) -> None:
    """Score a Parquet or CSV file, or a folder of Parquet files, with a registered model version; shows a progress bar.

    With --engine ray the rows are scored as Ray tasks, on the cluster at --address when given; the output is
    the same as the local engine's, row for row, and the summary says how many nodes scored rows.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modelmill.project import open_project
    from modelmill.registry import Registry
    from modelmill.serving.batch import count_rows
    from modelmill.serving.batch import predict_batch as run

    if not input.exists():
        raise InputError("--input", "does not exist", str(input))
    total = count_rows(input)
    with open_project() as project, Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=as_json, transient=False,
    ) as bar:
        task = bar.add_task("rows", total=total)
        summary = run(Registry(project), model, input, output, engine=engine, chunk_rows=chunk_rows,
                      progress=lambda done: bar.update(task, completed=done), ray_address=address)
    if as_json:
        emit_json(summary)
    else:
        table("predict-batch", ["model", "version", "engine", "rows", "seconds", "output"],
              [[summary["model"], summary["version"], summary["engine"], summary["rows"], summary["seconds"],
                summary["output"]]])
        console.print(f"rows/s: {summary['rows'] / max(summary['seconds'], 1e-9):,.0f}")
        if "nodes" in summary:
            console.print(f"Ray nodes that scored rows: {len(summary['nodes'])}")
