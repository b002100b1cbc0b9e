"""``modelmill train``, ``modelmill pipeline run|runs|schedule|unschedule|schedules|trigger|status``,
``modelmill pipeline export-airflow|run-step|finish-run`` and ``modelmill scheduler``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import typer

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.control.pipelines import importable_cwd, run_status, trigger_pipeline
from modelmill.errors import InputError, ModelmillError
from modelmill.project import Project, open_project
from modelmill.training.pipeline import PipelineResult, get_pipeline, pipeline_runs_of
from modelmill.training.scheduler import Scheduler, TriggerInfo
from modelmill.training.tracking import start_run

pipeline_app = typer.Typer(help="Pipelines of cached steps with lineage; schedules and triggers.",
                           no_args_is_help=True)

ParamOption = typer.Option([], "--param", "-p", help="KEY=VALUE (VALUE read as JSON when it parses). Repeatable.")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.add_typer(pipeline_app, name="pipeline")
    app.command("scheduler")(scheduler)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "hidden=[32,16]", "name=x"]`` -> ``{"lr": 0.1, "hidden": [32, 16], "name": "x"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError("--param", "must look like KEY=VALUE", item)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _busy(text: str, quiet: bool) -> AbstractContextManager[Any]:
    return nullcontext() if quiet else err_console.status(text)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def train(
    trainer: str = typer.Option(..., "--trainer", "-t", help="sklearn-hgb, lightgbm, xgboost, catboost or torch-mlp."),
    data: Path | None = typer.Option(None, "--data", help="Training data: a .csv or .parquet file."),
    label: str = typer.Option(..., "--label", help="The label column: two classes (binary), three or more "
                              "(multiclass), or numbers (regression), as --task says."),
    task: str = typer.Option("binary", "--task", help="binary (AUC, log loss), multiclass (log loss, macro F1, "
                             "accuracy) or regression (RMSE, MAE); multiclass and regression train with "
                             "sklearn-hgb, xgboost or catboost."),
    params: list[str] = ParamOption,
    features: str | None = typer.Option(None, help="Comma-separated feature columns (default: every numeric one; "
                                        "with --feature-service, every one the service serves)."),
    feature_service: str | None = typer.Option(
        None, "--feature-service", help="The feature service the model reads when served: recorded in the "
        "version's lineage, so POST /v1/models/NAME/predict looks its features up by entity keys."),
    entities: Path | None = typer.Option(
        None, "--entities", help="Instead of --data: entity keys, event times and the label (.csv or .parquet); "
        "the training set is the service's features joined to them point-in-time."),
    timestamp_column: str = typer.Option("event_timestamp", "--timestamp-column",
                                         help="The time column of --entities."),
    nproc: int = typer.Option(1, "--nproc", help="Processes for torch-mlp (DistributedDataParallel via torchrun)."),
    experiment: str = typer.Option("train", "--experiment", "-e", help="Experiment the run is filed under."),
    valid_fraction: float = typer.Option(0.2, help="Held-out share for the validation metrics."),
    seed: int = typer.Option(0, help="Seed of the train/validation split and of the trainer."),
    calibrate: str = typer.Option("none", "--calibrate", help="none, isotonic or sigmoid (Platt): map the "
                                  "model's probabilities on a calibration slice it does not train on "
                                  "(binary sklearn-hgb, lightgbm, xgboost or catboost)."),
    calibration_fraction: float = typer.Option(0.2, "--calibration-fraction",
                                               help="Share of the training part kept out to calibrate on."),
    register_as: str | None = typer.Option(None, "--register", help="Register the model under this name."),
    as_json: bool = JsonOption,
) -> None:
    """Train one model, track the run (params, curves, AUC, log loss, model artifact) and optionally register it.

    With --feature-service S the version's lineage names S, so the feature route serves it: its columns
    that S serves are looked up online by entity keys, any other column is a request-time feature.
    """
    import joblib

    from modelmill.cli.features import read_frame
    from modelmill.training.calibration import check_method
    from modelmill.training.trainers import train as fit

    check_method(calibrate, "--calibrate")
    settings = parse_params(params)
    if nproc != 1:
        if trainer != "torch-mlp":
            raise InputError("--nproc", "only the torch-mlp trainer trains on several processes", nproc)
        settings["nproc"] = nproc
    if data is not None and entities is not None:
        raise InputError("--entities", "give --data FILE or --entities FILE, not both", str(entities))
    source = data if data is not None else entities
    if source is None:
        raise InputError("--data", "give the training data: --data FILE, or --entities FILE with --feature-service S")
    if entities is not None and feature_service is None:
        raise InputError("--entities", "needs --feature-service S: the features joined to the entity rows",
                         str(entities))
    cols = [c.strip() for c in features.split(",")] if features else None
    with open_project() as project:
        served: ServicePlan | None = None
        if feature_service is not None:
            with _busy(f"joining the features of {feature_service}…", as_json or entities is None):
                frame, served = _with_service(project, feature_service, data, entities, timestamp_column, label,
                                              cols)
            cols = served.columns
        else:
            frame = read_frame(source, "--data")
        snapshot = f"file:{source.resolve()}#sha256={_file_digest(source)[:16]}"
        tags = {"trainer": trainer, "data": str(source), **({"feature_service": feature_service} if served else {})}
        with start_run(experiment, project=project, data_snapshot=snapshot, tags=tags,
                       feature_version=served.version if served else None) as run:
            with _busy(f"training {trainer} on {len(frame):,} rows…", as_json):
                result = fit(trainer, frame, label, run=run, valid_fraction=valid_fraction, seed=seed,
                             features=cols, task=task, calibrate=calibrate,
                             calibration_fraction=calibration_fraction, **settings)
            buf = io.BytesIO()
            joblib.dump(result.model, buf)
            artifact = run.log_artifact("model.joblib", buf.getvalue())
            version = _register(project, register_as, result, frame, run.run_id, snapshot,
                                served) if register_as else None
    out = {"run_id": run.run_id, "trainer": trainer, "metrics": result.metrics, "params": result.params,
           "features": result.feature_names, "artifact": artifact.path, "data_snapshot": snapshot,
           "model_version": version, "feature_service": feature_service,
           "feature_refs": served.refs if served else {},
           "request_features": served.request_features if served else [],
           **({"ddp": result.extra} if nproc > 1 else {})}
    if as_json:
        emit_json(out)
    else:
        scores = ", ".join(f"{k.replace('_', ' ')} {result.metrics[k]:.4f}"  # the task's metrics
                           for k in ("auc", "log_loss", "macro_f1", "accuracy", "rmse", "mae") if k in result.metrics)
        console.print(f"run [bold]{run.run_id}[/]: {scores}" + (f"; registered {version}" if version else ""))
        if served is not None:
            asked = ", ".join(served.request_features) or "none"
            console.print(f"served through feature service {served.service} ({served.version}): "
                          f"{len(served.refs)} features looked up by entity keys; request-time features: {asked}",
                          highlight=False, markup=False)


@dataclasses.dataclass(frozen=True)
class ServicePlan:
    """How a model trained with ``--feature-service`` is served: ``refs`` maps each column the service
    serves to its reference, ``request_features`` are the columns a request must send."""

    service: str
    version: str  # "NAME@vN": the definition the run trained against
    columns: list[str]
    refs: dict[str, str]
    request_features: list[str]


def _with_service(project: Project, name: str, data: Path | None, entities: Path | None, timestamp_column: str,
                  label: str, columns: list[str] | None) -> tuple[Any, ServicePlan]:
    """The training frame and how its columns map to feature service ``name``; an error when the service does
    not exist or serves none of the columns (a model it could not serve)."""
    import pandas as pd

    from modelmill.cli.features import build_training_set, read_frame
    from modelmill.features import FeatureStore
    from modelmill.features.definitions import match_columns

    store = FeatureStore(project)
    try:
        svc = store.feature_service(name)  # NotFoundError: "apply it first"
        info = next(i for i in store.definitions() if i.kind == "feature_service" and i.name == name)
        if entities is not None:
            frame = build_training_set(store, name, entities, timestamp_column=timestamp_column)
        else:
            assert data is not None
            frame = read_frame(data, "--data")
    finally:
        store.close()
    refs = list(svc.features)
    if columns is None:  # the columns the service serves: entity keys, times and stray numbers stay out
        candidates = [str(c) for c in frame.columns if c != label and pd.api.types.is_numeric_dtype(frame[c])]
        columns = [c for c, r in zip(candidates, match_columns(candidates, refs), strict=True) if r is not None]
    found = dict(zip(columns, match_columns(columns, refs), strict=True))
    by_feature: dict[str, list[str]] = {}
    for r in refs:
        by_feature.setdefault(r.split(":", 1)[1], []).append(r)
    for col, ref in found.items():
        if ref is None and len(by_feature.get(col, ())) > 1:
            raise InputError("--feature-service", f"column {col!r} is the feature of {' and '.join(by_feature[col])} "
                             f"in {name}; name it view__feature (features training-set --full-feature-names)", col)
    served = {c: r for c, r in found.items() if r is not None}
    if not served:
        have = ", ".join(map(str, frame.columns))
        raise InputError("--feature-service", f"serves none of the training columns: {name} has "
                         f"{', '.join(refs)}; the data has {have}; build the data with `modelmill features "
                         f"training-set --service {name}` (or train with --entities FILE)", name)
    return frame, ServicePlan(service=name, version=f"{name}@v{info.version}", columns=list(columns), refs=served,
                              request_features=[c for c, r in found.items() if r is None])


def _register(project: Project, name: str, result: Any, frame: Any, run_id: str, snapshot: str,
              served: ServicePlan | None = None) -> str:
    from modelmill.registry import Registry, infer_signature

    signature = infer_signature(frame[result.feature_names])
    lineage: dict[str, Any] = {"data_snapshot": snapshot, "run_id": run_id}
    if served is not None:
        lineage.update(feature_service=served.service, feature_definitions=served.version)
    mv = Registry(project).register(name, result.native, flavor=result.flavor, signature=signature, run_id=run_id,
                                    metrics=result.metrics, lineage=lineage,
                                    actor="cli", training_data=frame)  # also its monitoring reference profile
    return f"{mv.name}@{mv.version}"


# ---- pipelines -------------------------------------------------------------------------------


def _print_result(result: PipelineResult) -> None:
    table(f"pipeline {result.pipeline} run {result.id[:12]} (attempt {result.attempts}): {result.status}",
          ["step", "status", "attempts", "seconds", "error"],
          [[s.name, s.status, s.attempts, f"{s.seconds:.3f}", s.error or ""] for s in result.steps])
    if result.lineage:
        console.print("lineage: " + json.dumps(result.lineage, default=str), highlight=False)


@pipeline_app.command("run")
def pipeline_run(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name."),
    params: list[str] = ParamOption,
    resume: str | None = typer.Option(None, help="Resume a failed run: its id, or 'last'."),
    reason: str | None = typer.Option(None, help="Why it runs (recorded)."),
    executor: str | None = typer.Option(None, help="Where steps run: 'local' (threads; timed steps in child "
                                        "processes) or a registered scheme://...; default: the pipeline's own."),
    as_json: bool = JsonOption,
) -> None:
    """Run a pipeline (unchanged steps are skipped, independent steps run at once); exits 1 when a step fails."""
    importable_cwd()
    with open_project() as project:
        pipeline = get_pipeline(name, project)
        with _busy(f"running pipeline {pipeline.name}…", as_json):
            result = pipeline.run(project, params=parse_params(params), resume=resume, reason=reason or "cli",
                                  executor=executor)
    if as_json:
        emit_json(result.as_dict())
    else:
        _print_result(result)
    if result.status != "finished":
        raise typer.Exit(1)


@pipeline_app.command("runs")
def pipeline_runs(
    name: str | None = typer.Argument(None, help="Only this pipeline."),
    limit: int = typer.Option(20, help="How many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Recent pipeline runs with status, steps and lineage."""
    with open_project() as project:
        if name is not None and ":" in name:
            # Runs are stored under the pipeline's own name; 'module:attr' (as triggered) names the same one.
            importable_cwd()
            try:
                name = get_pipeline(name, project).name
            except ModelmillError:
                pass
        rows = pipeline_runs_of(project, name, limit=limit)
    if as_json:
        emit_json({"pipeline_runs": rows})
        return
    table("pipeline runs", ["id", "pipeline", "status", "attempts", "failed step", "steps"],
          [[r["id"][:12], r["pipeline"], r["status"], r["attempts"], r["failed_step"] or "",
            " ".join(f"{s['step']}:{s['status']}" for s in r["steps"])] for r in rows])


@pipeline_app.command("schedule")
def pipeline_schedule(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name."),
    cron: str = typer.Option(..., help="Cron expression in UTC, e.g. '0 3 * * *'."),
    params: list[str] = ParamOption,
    as_json: bool = JsonOption,
) -> None:
    """Run a pipeline on a cron schedule (from the next tick on); `modelmill scheduler` starts it."""
    with open_project() as project:
        sched = Scheduler(project)
        sched.schedule(name, cron, params=parse_params(params))
        entry = next(s for s in sched.schedules() if s["pipeline"] == name)
    if as_json:
        emit_json({"schedule": entry})
    else:
        console.print(f"{name}: {cron} (next tick at {entry['next_tick']:.0f})")


@pipeline_app.command("unschedule")
def pipeline_unschedule(name: str = typer.Argument(...), as_json: bool = JsonOption) -> None:
    """Remove a pipeline's schedule."""
    with open_project() as project:
        Scheduler(project).unschedule(name)
    if as_json:
        emit_json({"unscheduled": name})
    else:
        console.print(f"{name}: unscheduled")


@pipeline_app.command("schedules")
def pipeline_schedules(as_json: bool = JsonOption) -> None:
    """List cron schedules."""
    with open_project() as project:
        rows = Scheduler(project).schedules()
    if as_json:
        emit_json({"schedules": rows})
    else:
        table("schedules", ["pipeline", "cron", "next tick"], [[r["pipeline"], r["cron"], r["next_tick"]] for r in rows])


@pipeline_app.command("trigger")
def pipeline_trigger(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name."),
    reason: str = typer.Option(..., help="Why (recorded): an alert, a person, a data delivery."),
    key: str | None = typer.Option(None, help="Idempotency key: a repeated key starts the pipeline once."),
    params: list[str] = ParamOption,
    as_json: bool = JsonOption,
) -> None:
    """Ask the scheduler for one run of a pipeline (audited); follow it with `modelmill pipeline status`."""
    with open_project() as project:
        queued = trigger_pipeline(project, name, reason=reason, key=key, params=parse_params(params), actor="cli")
    if as_json:
        emit_json(queued)
    else:
        console.print(f"trigger {queued['trigger_id']} queued for {name}")


@pipeline_app.command("status")
def pipeline_status(
    name: str = typer.Argument(..., help="The pipeline, as it was triggered."),
    trigger_id: int = typer.Argument(..., metavar="TRIGGER_ID", help="The id `pipeline trigger` printed."),
    as_json: bool = JsonOption,
) -> None:
    """A triggered run: pending, running, finished or failed, with the pipeline run it started."""
    with open_project() as project:
        out = run_status(project, name, trigger_id)
    if as_json:
        emit_json(out)
        return
    t = out["trigger"]
    console.print(f"trigger {t['id']} {t['pipeline']}: {t['status']}" + (f" ({t['error']})" if t["error"] else ""),
                  highlight=False, markup=False)
    if out["run"] is not None:
        run = out["run"]
        table(f"pipeline run {run['id'][:12]}: {run['status']}", ["step", "status", "error"],
              [[s["step"], s["status"], s["error"] or ""] for s in run["steps"]])


@pipeline_app.command("export-airflow")
def pipeline_export_airflow(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name (the tasks find it so)."),
    params: list[str] = ParamOption,
    modelmill: str | None = typer.Option(None, "--modelmill", help="Absolute path of the modelmill command the "
                                         "tasks call; default: the one running now."),
    project_dir: Path | None = typer.Option(None, "--project-dir", help="Folder the tasks run in (the project's, "
                                            "with modelmill.toml); default: the current folder."),
    dag_id: str | None = typer.Option(None, "--dag-id", help="The DAG's id; default: modelmill__NAME."),
    env: list[str] = typer.Option([], "--env", help="An environment variable whose current value the tasks get "
                                  "(written into the file). Repeatable; MODELMILL_HOME and PYTHONPATH are "
                                  "passed when set."),
) -> None:
    """Print an Apache Airflow DAG of a pipeline: one task per step with the pipeline's dependencies, each
    calling `modelmill pipeline run-step` (caching and lineage as in a local run), and a last task
    `modelmill_finish` that ends the run. Save it in Airflow's dags folder: `... export-airflow NAME > dag.py`."""
    from modelmill.training.airflow import export_dag

    importable_cwd()
    command = modelmill or _modelmill_command()
    if not os.path.isabs(command) or not os.access(command, os.X_OK):
        raise InputError("--modelmill", "must be the absolute path of an executable modelmill command", command)
    values: dict[str, str] = {}
    for var in ["MODELMILL_HOME", "PYTHONPATH", *env]:
        if not var or "=" in var:
            raise InputError("--env", "must be the name of an environment variable", var)
        if var in os.environ:
            values[var] = os.environ[var]
        elif var in env:
            raise InputError("--env", "is not set in this environment", var)
    folder = (project_dir or Path.cwd()).resolve()
    if not folder.is_dir():
        raise InputError("--project-dir", "must be an existing folder", str(folder))
    with open_project() as project:
        pipeline = get_pipeline(name, project)
    text = export_dag(pipeline, ref=name, modelmill=command, project_dir=str(folder), params=parse_params(params),
                      dag_id=dag_id, env=values, argv_params=params)
    sys.stdout.write(text)


def _modelmill_command() -> str:
    beside = Path(sys.executable).parent / "modelmill"
    if beside.exists():
        return str(beside.absolute())
    found = shutil.which("modelmill")
    return str(Path(found).absolute()) if found else ""


@pipeline_app.command("run-step")
def pipeline_run_step(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name."),
    step_name: str = typer.Argument(..., metavar="STEP", help="The step to run."),
    key: str = typer.Option(..., "--key", help="The external run this step belongs to (an exported Airflow DAG "
                            "passes '<dag id>/<run id>'): every step with one key is one pipeline run."),
    params: list[str] = ParamOption,
    as_json: bool = JsonOption,
) -> None:
    """Run one step of a pipeline run named by --key, after its upstream steps (an exported Airflow DAG's
    task). Cached, retried and timed out as in `pipeline run`; exits 1 when the step fails."""
    from modelmill.training.airflow import run_key_id, run_step

    importable_cwd()
    with open_project() as project:
        pipeline = get_pipeline(name, project)
        result = run_step(project, pipeline, step_name, key=key, params=parse_params(params))
    out = {"pipeline": pipeline.name, "pipeline_run_id": run_key_id(pipeline.name, key),
           **dataclasses.asdict(result)}
    if as_json:
        emit_json(out)
    else:
        console.print(f"{pipeline.name} run {out['pipeline_run_id'][:12]} step {result.name}: {result.status}"
                      + (f" after {result.attempts} attempts" if result.attempts > 1 else "")
                      + (f" ({result.error})" if result.error else ""), highlight=False, markup=False)
    if result.status in ("failed", "timed_out"):
        raise typer.Exit(1)


@pipeline_app.command("finish-run")
def pipeline_finish_run(
    name: str = typer.Argument(..., help="'module:attr' or a registered pipeline name."),
    key: str = typer.Option(..., "--key", help="The external run, as given to `pipeline run-step`."),
    as_json: bool = JsonOption,
) -> None:
    """End the pipeline run named by --key once its steps ran (an exported Airflow DAG's last task):
    finished when every step is done, else failed; exits 1 when it failed."""
    from modelmill.training.airflow import finish_run

    importable_cwd()
    with open_project() as project:
        pipeline = get_pipeline(name, project)
        out = finish_run(project, pipeline, key=key)
    if as_json:
        emit_json(out)
    else:
        console.print(f"{pipeline.name} run {out['id'][:12]}: {out['status']}"
                      + (f" ({out['failed_step']}: {out['error']})" if out["failed_step"] else ""),
                      highlight=False, markup=False)
        console.print("lineage: " + json.dumps(out["lineage"], default=str), highlight=False, markup=False)
    if out["status"] != "finished":
        raise typer.Exit(1)


def _trigger_dict(t: TriggerInfo) -> dict[str, Any]:
    return {"id": t.id, "pipeline": t.pipeline, "reason": t.reason, "status": t.status,
            "pipeline_run_id": t.pipeline_run_id, "error": t.error}


def scheduler(
    once: bool = typer.Option(False, "--once", help="One pass: enqueue due cron ticks, run pending triggers, exit."),
    max_seconds: float | None = typer.Option(None, "--max-seconds", help="Stop after this many seconds."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between polls."),
    lease: float = typer.Option(60.0, "--lease", help="Seconds a claimed trigger stays this scheduler's without a "
                                "renewal (it renews every third of that); a dead scheduler's triggers are "
                                "reclaimed and resumed by another once it expires."),
    as_json: bool = JsonOption,
) -> None:
    """Start pipelines on their cron schedules and on triggers; each trigger starts once, whatever
    number of schedulers run. Exits 1 when a trigger it ran failed (see `modelmill pipeline runs`)."""
    importable_cwd()

    def show(done: list[TriggerInfo]) -> None:
        for t in done:
            err_console.print(f"trigger {t.id} {t.pipeline}: {t.status}" + (f" ({t.error})" if t.error else ""),
                              highlight=False, markup=False)

    with open_project() as project:
        sched = Scheduler(project, poll_interval=poll, lease=lease)
        if not as_json:
            err_console.print(f"scheduler {sched.worker} polling every {poll:g} s")
        ran = sched.run(once=once, max_seconds=max_seconds, on_tick=None if as_json else show)
    failed = [t for t in ran if t.status != "finished"]
    if as_json:
        emit_json({"worker": sched.worker, "ran": [_trigger_dict(t) for t in ran], "failed": len(failed)})
    if failed:
        # A cron job or CI step running `scheduler --once` must see that the retraining it asked for did not happen.
        err_console.print(f"{len(failed)} of {len(ran)} triggers failed: "
                          + ", ".join(f"{t.id} ({t.pipeline})" for t in failed), highlight=False, markup=False)
        raise typer.Exit(1)
