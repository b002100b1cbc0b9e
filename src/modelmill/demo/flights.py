"""A year of New York flights through the whole loop.

Phases, each computed from the data (nothing is scripted to an outcome):

1. ingest: hourly weather and the flight schedule go through the broker into the offline store;
2. features: weather at the origin, aircraft age, rolling late-arrival rates fed by landed flights;
3. train: the retraining pipeline trains on January and February, tracks, registers and gates;
4. serve: hour by hour, every flight's prediction is asked of the real HTTP server at its scheduled
   departure; landed flights stream in (labels and rolling rates);
5. decide: at each simulated day's end, one round of the loop (:class:`modelmill.loop.Loop`, the code
   ``modelmill loop`` runs) over the ``[models.flights_delay]`` table that :func:`loop_toml` writes into
   the demo's ``modelmill.toml``: drift against the production version's reference and the delayed-label
   AUC, over windows of event time (``[monitoring] clock = "event"``: the replay's 2013, not the wall
   clock); a rule that fires queues the retraining pipeline, the loop's gate judges the candidate, and an
   accepted one is rolled out shadow → 5% → 10% → 50% → 100% under guardrails. The demo only drives time
   and traffic, and narrates; at each month's end it also measures the month for the summary table;
6. as a user would: an A/B test between two versions (an experiment on log loss), and a deliberately
   broken candidate put into a canary, which the loop's guardrails must roll back;
7. a summary table and ``report.html``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from modelmill.datasets import load_flights, load_planes
from modelmill.demo.client import KeepAliveClient
from modelmill.demo.definitions import ARRIVALS, SERVICE, definitions
from modelmill.demo.pipeline import LABEL, RETRAIN, entity_frame
from modelmill.demo.server import ServerProcess
from modelmill.errors import ModelmillError
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.features import FeatureStore
from modelmill.ingest import FLIGHTS, WEATHER, EventSchema, Ingestor, open_publisher, open_source
from modelmill.ingest.datasets import load as load_events
from modelmill.loop import Lease, Loop, load_loop_config
from modelmill.monitoring import DriftOptions, ReferenceStore, classification_metrics, summarize
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import RolloutController, ServingGuardrails
from modelmill.serving import RouteTable
from modelmill.store.feedback import Feedback, write_labels
from modelmill.store.maps import map_frame

__all__ = ["DemoOptions", "DemoResult", "FlightsDemo", "MonthRow", "loop_toml"]

YEAR_START = pd.Timestamp("2013-01-01", tz="UTC")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """How much of the year to replay and how the loop reacts."""

    months: int = 12
    train_months: int = 2
    model: str = "flights_delay"
    trainer: str = "sklearn-hgb"
    concurrency: int = 32
    holdout_days: int = 10
    retrain_days: int = 60
    min_auc: float = 0.60
    max_regression: float = 0.01
    auc_margin: float = 0.03
    drift_share: float = 0.5
    rollout_plan: str = "shadow,5,10,50,100"
    rollout_min_requests: int = 150
    drift_days: int = 14  # the loop's drift window, in days of the replay
    label_days: int = 28  # the loop's delayed-label window (AUC), in days of the replay
    min_labels: int = 5_000  # fewer labelled predictions in the label window (about 6 days): no data
    hold_days: int = 7  # how long a rule must hold before it fires (so a noisy week does not retrain)
    ab_test: bool = True
    broken_candidate: bool = True
    report: Path = Path("report.html")
    seed: int = 0


def loop_toml(options: DemoOptions) -> str:
    """The ``[monitoring]`` and ``[models.NAME]`` tables the demo's loop runs on (appended to its modelmill.toml).

    A model retrained on newer months is expected to score differently from the one it replaces (that is
    why it was retrained), so the prediction-shift guardrail, a proxy for "broken" while no labels are in,
    is off: the delayed-label loss judges a candidate instead, with the error rate and latency guardrails.
    """
    m = options.model
    return f'''
[monitoring]
# The demo replays 2013: windows are over the event time each request's features were judged at, and
# end at the online store's watermark (the replay's now), not at the wall clock.
clock = "event"
window = "{options.drift_days}d"
label_window = "{options.label_days}d"
models = ["{m}"]

[models.{m}]
feature_service = "{SERVICE}"

[models.{m}.pipeline]
function = "modelmill.demo.pipeline:RECENT"
params = {{ days = {options.retrain_days}, holdout_days = {options.holdout_days}, trainer = "{options.trainer}", seed = {options.seed} }}

[models.{m}.gate]
label = "{LABEL}"
data = "holdout"
against = "production"
min = {{ auc = {options.min_auc} }}
max_regression = {{ auc = {options.max_regression} }}

[models.{m}.rules.drift]
share = {options.drift_share}
window = "{options.drift_days}d"
for = "{options.hold_days}d"        # held this long (days of the replay) before it fires and retrains

[models.{m}.rules.metric_drop]
metric = "auc"
margin = {options.auc_margin}
min_labels = {options.min_labels}
window = "{options.label_days}d"
for = "{options.hold_days}d"

[models.{m}.rollout]
plan = "{options.rollout_plan}"
min_requests = {options.rollout_min_requests}
stage_seconds = "1s"

[models.{m}.rollout.guardrails]
max_output_shift = false
'''


@dataclasses.dataclass
class MonthRow:
    """One line of the summary table."""

    month: str
    requests: int = 0
    errors: int = 0
    labelled: int = 0
    auc: float | None = None
    drift_share: float | None = None
    drift_share_calibrated: float | None = None  # the same month with calibrated thresholds
    drifted: list[str] = dataclasses.field(default_factory=list)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    drift: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    production: int | None = None
    events: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DemoResult:
    months: list[MonthRow]
    model: str
    versions: list[int]
    events: list[str]
    ab: dict[str, Any] | None
    broken: dict[str, Any] | None
    report: Path | None
    seconds: float
    timings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["report"] = str(self.report) if self.report else None
        return out


class FlightsDemo:
    """Runs the flights scenario against one project (embedded defaults or real servers)."""

    def __init__(self, project: Project, options: DemoOptions, *, say: Callable[[str], None] = print,
                 progress: Any = None) -> None:
        self.project = project
        self.options = options
        self.say = say
        self.progress = progress
        self.registry = Registry(project)
        self.features = FeatureStore(project, actor="demo")
        self.months = [MonthRow(month=f"2013-{m:02d}") for m in range(1, options.months + 1)]
        self.events: list[str] = []
        self.timings: dict[str, float] = {}
        self.log: list[dict[str, Any]] = []  # one row per prediction request the demo made
        self.request_of: dict[str, str] = {}  # flight_id -> request_id
        self.server: ServerProcess | None = None
        self.controller: RolloutController | None = None
        self.loop: Loop | None = None
        self.ab: dict[str, Any] | None = None
        self.broken: dict[str, Any] | None = None
        self._ab_route: dict[str, Any] | None = None
        self._ab_pending: tuple[int, MonthRow] | None = None
        self.last_drift: tuple[Any, Any, Any] | None = None  # report, reference summaries, current summaries
        self._labels: list[dict[str, Any]] = []
        self._streams: dict[str, tuple[Any, Ingestor]] = {}
        flights = load_flights()
        self.end = YEAR_START + pd.DateOffset(months=options.months)
        self.train_end = YEAR_START + pd.DateOffset(months=options.train_months)
        self.flights = flights[flights["sched_dep"] < self.end].reset_index(drop=True)

    # ---- helpers --------------------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self.say(f"[bold]▶ {name}[/]")
        yield
        self.timings[name] = round(time.perf_counter() - started, 2)

    def note(self, text: str, month: MonthRow | None = None) -> None:
        self.events.append(text)
        if month is not None:
            month.events.append(text)
        self.say(f"  • {text}")

    def _task(self, description: str, total: int | None) -> Callable[[int], None]:
        if self.progress is None:
            return lambda _n: None
        task = self.progress.add_task(description, total=total)
        return lambda n: self.progress.update(task, completed=n)

    def _ingest(self, schema: EventSchema, rows: pa.Table | list[dict[str, Any]], *, processors: Any = (),
                show: bool = True) -> int:
        """Publish events to the broker and consume them into the offline store; returns events written.

        One publisher and one ingestor per stream serve every call: a sink opened once keeps its index
        of stored event ids, where reopening it each hour would reload every id stored so far.
        """
        records = rows.to_pylist() if isinstance(rows, pa.Table) else rows
        if not records:
            return 0
        pub, ingestor = self._stream(schema, processors)
        for i in range(0, len(records), 20_000):
            pub.publish([orjson.dumps(r, option=orjson.OPT_NAIVE_UTC) for r in records[i:i + 20_000]])
        update = self._task(f"ingest {schema.name}", len(records)) if show else (lambda _n: None)
        # Stop as soon as every event just published has been consumed: a broker over the network (NATS,
        # Kafka) may answer a poll before the events are deliverable, so "idle" is not "done".
        # The ingestor's counts run over every call: this call's share is the difference.
        polled, written, dead = ingestor.stats.polled, ingestor.stats.written, ingestor.stats.dead_letters
        stats = ingestor.run(max_events=polled + len(records), idle_timeout=10.0,
                             on_progress=lambda s: update(s.polled - polled))
        if stats.dead_letters > dead:
            self.note(f"{stats.dead_letters - dead} {schema.name} events failed validation and went to dead letters")
        return int(stats.written - written)

    def _stream(self, schema: EventSchema, processors: Any) -> tuple[Any, Ingestor]:
        got = self._streams.get(schema.name)
        if got is None:
            broker = self.project.settings.broker
            source = open_source(broker, stream=schema.name, group="demo", schema=schema)
            got = self._streams[schema.name] = (
                open_publisher(broker, stream=schema.name).open(),
                Ingestor(self.project, schema, source, processors=processors, batch_seconds=0.2))
        return got

    def _close_streams(self) -> None:
        for pub, _ in self._streams.values():
            pub.close()
        self._streams.clear()

    # ---- phases ---------------------------------------------------------------------------------

    def ingest(self) -> None:
        with self.phase("1 ingest: weather and flight schedule through the broker"):
            months = list(range(1, self.options.months + 1))
            for schema in (WEATHER, FLIGHTS):
                table = load_events(schema.name)
                table = table.filter(pa.compute.is_in(table.column("month"), pa.array(months)))
                started = time.perf_counter()
                n = self._ingest(schema, table)
                rate = n / max(time.perf_counter() - started, 1e-9)
                self.note(f"{schema.name}: {n:,} events into the offline store ({rate:,.0f} events/s "
                          f"through {self.project.settings.broker.split('://')[0]})")

    def define_features(self) -> None:
        with self.phase("2 features: definitions, aircraft, point-in-time sources"):
            planes = load_planes()
            aircraft = pd.DataFrame({
                "tailnum": planes["tailnum"],
                "age_years": (2013 - planes["year"]).astype("float64"),
                "seats": planes["seats"].astype("float64"),
                "registered": pd.Timestamp("2012-01-01", tz="UTC"),
            })
            path = self.project.settings.home / "demo" / "aircraft.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            aircraft.to_parquet(path, index=False)
            applied = self.features.apply(definitions(str(path)))
            self.features.materialize(pd.Timestamp("2011-12-31", tz="UTC"), YEAR_START, views=["aircraft"])
            self.note(f"applied {len(applied)} definitions; feature service {SERVICE!r} has "
                      f"{len(self.features.feature_service(SERVICE).features)} features")

    def train_first(self) -> None:
        with self.phase("3 train: January–February, tracked, registered, gated"):
            landed = self._arrivals(self.flights["arrived_at"] < self.train_end)
            self._ingest(ARRIVALS, landed, processors=[self.features.stream_processor()])
            decision = self._run_pipeline(YEAR_START, self.train_end, reason="first model")
            if not decision["accepted"]:
                raise ModelmillError(f"the first model was rejected by the gate: {decision['reason']}")
            self.registry.set_alias(self.options.model, "production", decision["version"], actor="demo",
                                    reason="first model, accepted by the gate")
            self.note(f"{self.options.model}@{decision['version']} is production "
                      f"(holdout AUC {decision['auc']:.3f} on {decision['rows']:,} flights)")

    def _arrivals(self, mask: pd.Series) -> list[dict[str, Any]]:
        return self._arrivals_rows(self.flights[mask & self.flights[LABEL].notna()])

    def _run_pipeline(self, start: pd.Timestamp, end: pd.Timestamp, *, reason: str) -> dict[str, Any]:
        params = {"start": start.isoformat(), "end": end.isoformat(), "holdout_days": self.options.holdout_days,
                  "trainer": self.options.trainer, "seed": self.options.seed, "model": self.options.model,
                  "min_auc": self.options.min_auc, "max_regression": self.options.max_regression}
        result = RETRAIN.run(self.project, params=params, reason=reason)
        if result.status != "finished":
            raise ModelmillError(f"pipeline {RETRAIN.name} failed at {result.failed_step}: {result.error}")
        decision: dict[str, Any] = result.value("decision")
        self._store_reference(decision["version"], result.value("train_set"))
        return decision

    def _store_reference(self, version: int, train_set: pd.DataFrame) -> None:
        mv = self.registry.resolve(f"{self.options.model}@{version}")
        columns = [f.name for f in mv.signature.inputs]
        model = self.registry.load(mv)
        sample = train_set.sample(min(len(train_set), 20_000), random_state=self.options.seed)
        X = sample[columns].to_numpy(dtype="float64")
        ReferenceStore(self.project).compute(self.options.model, version, sample[columns],
                                             predictions=model.predict(X))

    # ---- serving loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        with self.phase("4–6 serve, and the loop decides: hour by hour, March onwards"):
            self.server = ServerProcess(self.project.settings, models=[f"{self.options.model}@production"],
                                        log=self.project.settings.home / "demo" / "serve.log").start()
            # What a user does by hand (the A/B test, the broken candidate's canary) goes through the same
            # controller; every rollout is stepped by the loop.
            self.controller = RolloutController(
                self.project, source=ServingGuardrails(self.project, metrics_url=f"{self.server.url}/metrics"),
                actor="demo")
            self.loop = Loop(self.project, load_loop_config(self.project.settings), actor="loop",
                             lease=Lease(self.project.db, holder=f"demo-{os.getpid()}"))
            try:
                asyncio.run(self._simulate())
            finally:
                self.loop.lease.release()
                self.server.stop()

    async def _simulate(self) -> None:
        assert self.server is not None
        hour = self.flights["sched_dep"].dt.floor("h")
        by_hour = {h: g for h, g in self.flights[self.flights["sched_dep"] >= self.train_end].groupby(hour)}
        landed = self.flights[(self.flights["arrived_at"] >= self.train_end) & self.flights[LABEL].notna()]
        landed_by_hour = {h: g for h, g in landed.groupby(landed["arrived_at"].dt.ceil("h"))}
        hours = pd.date_range(self.train_end, self.end, freq="h", inclusive="left")
        update = self._task("serve flights hour by hour", len(hours))
        async with KeepAliveClient(self.server.url, connections=self.options.concurrency) as client:
            for i, h in enumerate(hours):
                arrivals = landed_by_hour.get(h)
                if arrivals is not None:
                    self._land(arrivals)
                self.features.materialize_incremental(end=h, views=["weather"])
                due = by_hour.get(h)
                if due is not None:
                    await self._predict(client, due)
                nxt = h + pd.Timedelta(hours=1)
                if nxt.day != h.day:
                    self._end_of_day(nxt)
                if nxt.month != h.month:
                    self._end_of_month(h.month, nxt)
                update(i + 1)

    def _land(self, arrivals: pd.DataFrame) -> None:
        self._ingest(ARRIVALS, self._arrivals_rows(arrivals), processors=[self.features.stream_processor()], show=False)
        for fid, ts, y in zip(arrivals["flight_id"], arrivals["arrived_at"], arrivals[LABEL], strict=True):
            rid = self.request_of.get(fid)
            if rid is not None:
                self._labels.append({"request_id": rid, "ts": ts.to_pydatetime(), "label": int(y)})

    def _arrivals_rows(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        return [{"flight_id": f, "arrived_at": t.isoformat(), "carrier": c, "origin": o, "route": r,
                 "late": int(y), "arr_delay": None if d != d else float(d)}
                for f, t, c, o, r, y, d in zip(rows["flight_id"], rows["arrived_at"], rows["carrier"],
                                               rows["origin"], rows["route"], rows[LABEL], rows["arr_delay"],
                                               strict=True)]

    async def _predict(self, client: KeepAliveClient, due: pd.DataFrame) -> None:
        """The flights departing this hour, asked for in one request; each is routed and logged on its own."""
        ents = entity_frame(due)
        month = int(due["sched_dep"].iloc[0].month)
        ids = ents["flight_id"].tolist()
        instances = [{"entities": {"origin": o, "carrier": c, "route": r, "tailnum": t},
                      "features": {"dep_hour": hr, "weekday": wd, "distance": dist}, "routing_key": fid}
                     for o, c, r, t, hr, wd, dist, fid in zip(
                         ents["origin"], ents["carrier"], ents["route"], ents["tailnum"], ents["dep_hour"],
                         ents["weekday"], ents["distance"], ids, strict=True)]
        resp = await client.post(f"/v1/models/{self.options.model}/predict", orjson.dumps({"instances": instances}))
        ms = resp.seconds * 1000
        if resp.status != 200:
            results: list[dict[str, Any]] = [{"status": resp.status}] * len(ids)
        else:
            results = orjson.loads(resp.body)["predictions"]
        for fid, label, data in zip(ids, due[LABEL], results, strict=True):
            row: dict[str, Any] = {"flight_id": fid, "month": month, "latency_ms": ms,
                                   "status": data.get("status", 200), "label": None if pd.isna(label) else int(label)}
            if "prediction" in data:
                row.update(request_id=data["request_id"], prediction=data["prediction"], version=data["version"],
                           variant=data["variant"])
                self.request_of[fid] = data["request_id"]
            self.log.append(row)

    def _end_of_day(self, now: pd.Timestamp) -> None:
        if self._labels:
            write_labels(self.project.offline, self.options.model, self._labels)
            self._labels = []
        assert self.loop is not None
        month = self.months[now.month - 1 if now.day > 1 else now.month - 2]
        if self._ab_pending is not None and not self._rollout_active():
            pending, row = self._ab_pending
            self._ab_pending = None
            self._maybe_start_ab(pending, row)
        self._narrate(self.loop.round(), now, month)

    def _narrate(self, out: dict[str, Any], now: pd.Timestamp, month: MonthRow) -> None:
        """What one round of the loop decided, as notes (a round that changed nothing says nothing)."""
        if not out.get("leader"):
            self.note(f"{now:%Y-%m-%d}: the loop round did not lead ({out.get('following')} holds its lease)", month)
            return
        day = f"{now - pd.Timedelta(hours=1):%Y-%m-%d}"
        phases = out["models"].get(self.options.model, {})
        monitor = phases.get("monitor") or {}
        if "error" in monitor:
            self.note(f"{day}: the loop's monitor failed: {monitor['error']}", month)
        for change in monitor.get("alerts_changed", []):
            self.note(f"{day}: alert {change['rule']} {change['status']}", month)
        for t in out.get("scheduler") or []:
            self.note(f"{day}: the loop retrained (trigger {t['trigger_id']}): {t['status']}"
                      + (f" ({t['error']})" if t.get("error") else ""), month)
        for d in phases.get("decisions") or []:
            if not isinstance(d, dict) or d.get("status") in ("pending", "accepted"):
                continue
            self.note(f"{day}: loop decision on v{d.get('version')}: {d.get('status')}: {d.get('reason')}", month)
        roll = phases.get("rollout")
        if isinstance(roll, dict) and "error" in roll:
            self.note(f"{day}: the loop's rollout step failed: {roll['error']}", month)
        elif roll is not None and roll.get("action") != "hold":
            self.note(f"{day}: rollout of v{roll['candidate']}: {roll['action']} (now {roll['stage']}, "
                      f"{roll['status']}); {roll['reason']}", month)
        if roll is not None or any(isinstance(d, dict) and d.get("status") == "rolling_out"
                                   for d in phases.get("decisions") or []):
            time.sleep(0.8)  # routes are re-read by the server every 0.5 s

    def _rollout(self) -> Any:
        """The model's latest rollout state, or None when it never had one (one query)."""
        assert self.controller is not None
        try:
            return self.controller.get(self.options.model)
        except ModelmillError:
            return None

    def _rollout_active(self) -> bool:
        state = self._rollout()
        return state is not None and bool(state.active)

    # ---- monthly monitoring ---------------------------------------------------------------------

    def _end_of_month(self, month: int, now: pd.Timestamp) -> None:
        row = self.months[month - 1]
        log = pd.DataFrame([r for r in self.log if r["month"] == month])
        if log.empty:
            return
        row.requests = len(log)
        row.errors = int((log["status"] != 200).sum())
        ok = log[log["status"] == 200]
        row.p50_ms = float(np.percentile(log["latency_ms"], 50))
        row.p95_ms = float(np.percentile(log["latency_ms"], 95))
        row.p99_ms = float(np.percentile(log["latency_ms"], 99))
        row.versions = {str(int(k)): int(v) for k, v in ok["version"].value_counts().sort_index().items()}
        row.production = self.registry.aliases(self.options.model).get("production")
        labelled = ok[ok["label"].notna() & ok["flight_id"].isin(self._landed_before(now))]
        row.labelled = len(labelled)
        if labelled["label"].nunique() == 2:
            row.auc = classification_metrics(labelled["label"].to_numpy(), labelled["prediction"].to_numpy())["auc"]
        row.drift_share, row.drifted = self._drift(ok, row)
        if self._ab_route is not None and self._ab_route["month_number"] == month:
            self._finish_ab(row)
        self._maybe_start_ab(month + 1, row)
        if self.options.broken_candidate and month + 1 == self.options.months and self.broken is None:
            self._start_broken(row)
        auc = "n/a" if row.auc is None else f"{row.auc:.3f}"
        share = "n/a" if row.drift_share is None else f"{row.drift_share:.2f}"
        self.say(f"  {row.month}: {row.requests:,} predictions, AUC {auc} on {row.labelled:,} labels, "
                 f"drift share {share}, p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms, versions {row.versions}")

    def _landed_before(self, now: pd.Timestamp) -> set[str]:
        done = self.flights[self.flights["arrived_at"] < now]
        return set(done["flight_id"])

    def _drift(self, ok: pd.DataFrame, row: MonthRow) -> tuple[float | None, list[str]]:
        production = row.production
        if production is None:
            return None, []
        logged = Feedback(self.project.offline).served_features(
            self.options.model, production, request_ids=ok["request_id"].dropna().tolist(), exclude_prefix="shadow")
        if logged is None or logged.num_rows < 100:
            return None, []
        current = map_frame(logged.column("features"))
        outputs = logged.column("output").to_numpy(zero_copy_only=False).astype("float64")
        profile = ReferenceStore(self.project).load(self.options.model, production)
        report = profile.compare(current, predictions=outputs)
        row.drift_share_calibrated = profile.compare(current, predictions=outputs,
                                                     options=DriftOptions(calibrated=True)).drift_share
        row.drift = report.to_dict()
        cur = summarize(current, columns=[c for c in profile.columns if c in current.columns],
                        kinds=profile.kinds)  # type: ignore[arg-type]
        self.last_drift = (report, profile.columns, cur)
        return float(report.drift_share), sorted(report.drifted)

    # ---- A/B test and the broken candidate ------------------------------------------------------

    def _maybe_start_ab(self, month: int, row: MonthRow) -> None:
        if not self.options.ab_test or self.ab is not None or self._ab_route is not None or month > self.options.months:
            return
        if self.options.broken_candidate and month == self.options.months and self.broken is None \
                and self._ab_pending is None:
            self._ab_pending = (month, row)  # after the rollback drill that opens the last month
            return
        aliases = self.registry.aliases(self.options.model)
        production = aliases.get("production")
        # A challenger is a version a gate accepted (the planted broken candidate never went through one).
        earlier = [v.version for v in self.registry.versions(self.options.model)
                   if v.version != production and (v.gate or {}).get("accepted") is True]
        if production is None or not earlier or self._rollout_active():
            return
        challenger = max(earlier)
        name = f"flights-ab-2013-{month:02d}"
        # An experiment owns the model's route while it runs: a version the loop accepts meanwhile waits.
        Experiments(self.project).create(Experiment(
            name=name, model=self.options.model, unit="flight_id", primary_metric="log_loss",
            variants=(Arm("control", 0.5, production), Arm("treatment", 0.5, challenger))), actor="demo")
        self._ab_route = {"month": f"2013-{month:02d}", "month_number": month, "experiment": name,
                          "control_version": production, "treatment_version": challenger}
        self.note(f"{row.month}: A/B test for 2013-{month:02d} (experiment {name}): v{production} (control) vs "
                  f"v{challenger} (treatment), 50/50 by flight, on log loss", row)
        time.sleep(0.8)

    def _finish_ab(self, row: MonthRow) -> None:
        assert self._ab_route is not None
        experiments = Experiments(self.project)
        name = self._ab_route["experiment"]
        data = experiments.analyze(name).as_dict()
        self.ab = {**self._ab_route, "metric": "log_loss (lower is better)", "analysis": data,
                   "decision": data.get("decision"), "reason": data.get("reason")}
        self.note(f"{row.month}: A/B decision: {data.get('decision')} ({data.get('reason')})", row)
        winner = int(self._ab_route["treatment_version"])
        self._end_ab_route()
        if data.get("decision") == "switch_to_treatment":
            # the decision is acted on, as a user would: the winner becomes production (audited), not just reported
            self.registry.set_alias(self.options.model, "production", winner, actor="demo",
                                    reason=f"A/B test {name}: {data.get('decision')}")
            self.note(f"{row.month}: v{winner} is production (the A/B test's winner)", row)

    def _end_ab_route(self) -> None:
        """Stop the running A/B experiment, and serve the production alias again."""
        if self._ab_route is not None:
            Experiments(self.project).stop(self._ab_route["experiment"], actor="demo", result=self.ab)
            RouteTable(self.project).delete(self.options.model, actor="demo", reason="A/B test over")
            self._ab_route = None
            time.sleep(0.8)

    def _start_broken(self, row: MonthRow) -> None:
        from modelmill.demo.faulty import FaultyModel

        assert self.controller is not None
        if self._rollout_active():  # one rollout at a time: the loop's own holds the route; say so, never skip quietly
            self.note(f"{row.month}: the broken-candidate drill is skipped: the loop's own rollout is still "
                      "running (one rollout at a time; tests/console/test_browser.py runs the drill alone)", row)
            return
        self._end_ab_route()
        production = self.registry.resolve(f"{self.options.model}@production")
        loaded = self.registry.load(production)
        columns = [f.name for f in production.signature.inputs]
        limit = float(self.flights["distance"].quantile(0.9))
        faulty = FaultyModel(loaded.raw, column=columns.index("distance"), limit=limit)
        mv = self.registry.register(self.options.model, faulty, flavor="sklearn", signature=production.signature,
                                    lineage={**production.lineage, "note": "planted fault: fails on long flights"},
                                    tags={"broken": "true"}, actor="demo")
        # Put into a canary by hand, as `modelmill rollout start` would; the loop steps it like any rollout.
        self.controller.start(self.options.model, mv.version, plan="5,10,50,100",
                              min_requests=self.options.rollout_min_requests, stage_seconds=0.0)
        self.broken = {"version": mv.version, "started": row.month}
        self.note(f"{row.month}: a deliberately broken candidate v{mv.version} (fails on ~10% of flights) "
                  "enters a 5% canary", row)
        time.sleep(0.8)

    # ---- the whole run --------------------------------------------------------------------------

    def run(self) -> DemoResult:
        started = time.perf_counter()
        try:
            self.ingest()
            self.define_features()
            self.train_first()
            self.serve()
        finally:
            self._close_streams()
        if self.broken is not None:
            self._settle_broken()
        versions = [v.version for v in self.registry.versions(self.options.model)]
        return DemoResult(months=self.months[self.options.train_months:], model=self.options.model,
                          versions=versions, events=self.events, ab=self.ab, broken=self.broken, report=None,
                          seconds=round(time.perf_counter() - started, 1), timings=self.timings)

    def _settle_broken(self) -> None:
        assert self.controller is not None and self.broken is not None
        state = self.controller.get(self.options.model)
        log = pd.DataFrame(self.log)
        month = log[log["month"] == self.options.months]
        errors = int((month["status"] != 200).sum())
        self.broken.update(status=state.status, reason=state.reason, user_requests=len(month), user_errors=errors,
                           error_share=errors / max(len(month), 1))
        self.note(f"broken candidate v{self.broken['version']}: {state.status} ({state.reason}); "
                  f"{errors} of {len(month):,} user requests that month saw an error "
                  f"({100 * errors / max(len(month), 1):.2f}%)")


def short(column: str) -> str:
    """``carrier_delays__late_mean_7d`` → ``carrier_delays.late_mean_7d``; ``__prediction__`` → ``prediction``."""
    return column.strip("_").replace("__", ".")


def month_table(rows: list[MonthRow]) -> list[list[str]]:
    """Rows of the summary table, as text."""
    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    return [[r.month, f"{r.requests:,}", fmt(r.auc, ".3f"), f"{r.labelled:,}", fmt(r.drift_share, ".2f"),
             fmt(r.drift_share_calibrated, ".2f"),
             ", ".join(short(c) for c in r.drifted[:4]) + ("…" if len(r.drifted) > 4 else ""),
             fmt(r.p50_ms, ".1f"), fmt(r.p99_ms, ".1f"), str(r.production or ""),
             " ".join(f"v{k}:{v}" for k, v in r.versions.items())] for r in rows]


MONTH_COLUMNS = ["month", "predictions", "AUC", "labels", "drift", "drift cal.", "drifted", "p50 ms", "p99 ms",
                 "prod", "served by"]
