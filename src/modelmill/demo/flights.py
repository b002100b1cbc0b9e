"""A year of New York flights through the whole loop.

Phases, each computed from the data (nothing is scripted to an outcome):

1. ingest: hourly weather and the flight schedule go through the broker into the offline store;
2. features: weather at the origin, aircraft age, rolling late-arrival rates fed by landed flights;
3. train: the retraining pipeline trains on January and February, tracks, registers and gates;
4. serve: hour by hour, every flight's prediction is asked of the real HTTP server at its scheduled
   departure; landed flights stream in (labels and rolling rates);
5. monitor: at each month's end, delayed-label AUC, drift against the production version's
   reference, latency; an alert starts the retraining pipeline, and an accepted candidate is rolled
   out shadow → 5% → 10% → 50% → 100% under guardrails;
6. an A/B test between two versions, and a deliberately broken candidate that must be rolled back;
7. a summary table and ``report.html``.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from modelmill.experiments import analyze_frame
from modelmill.features import FeatureStore
from modelmill.ingest import FLIGHTS, WEATHER, EventSchema, Ingestor, open_publisher, open_source
from modelmill.ingest.datasets import load as load_events
from modelmill.monitoring import (
    ActionRegistry,
    AlertEvaluator,
    ReferenceStore,
    Rule,
    classification_metrics,
    log_losses,
    summarize,
)
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import Guardrails, RolloutController, ServingGuardrails
from modelmill.serving import RouteTable, Variant
from modelmill.store.feedback import Feedback, write_labels
from modelmill.store.maps import map_frame
from modelmill.training import Scheduler, trigger

__all__ = ["DemoOptions", "DemoResult", "FlightsDemo", "MonthRow"]

YEAR_START = pd.Timestamp("2013-01-01", tz="UTC")
# A model retrained on newer months is expected to score differently from the one it replaces (that is
# why it was retrained), so the prediction-shift guardrail, a proxy for "broken" while no labels are in, is
# off for it: its delayed-label loss judges it instead, with the error rate and latency guardrails. The
# planted broken candidate keeps every guardrail.
RETRAINED_GUARDRAILS = Guardrails(max_output_shift=None)


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
    ab_test: bool = True
    broken_candidate: bool = True
    report: Path = Path("report.html")
    seed: int = 0


@dataclasses.dataclass
class MonthRow:
    """One line of the summary table."""

    month: str
    requests: int = 0
    errors: int = 0
    labelled: int = 0
    auc: float | None = None
    drift_share: float | None = None
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
        self.ab: dict[str, Any] | None = None
        self.broken: dict[str, Any] | None = None
        self._ab_route: dict[str, Any] | None = None
        self._ab_pending: tuple[int, MonthRow] | None = None
        self.last_drift: tuple[Any, Any, Any] | None = None  # report, reference summaries, current summaries
        self._retrain: dict[str, Any] | None = None
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
        with self.phase("4–6 serve, monitor, retrain, roll out: hour by hour, March onwards"):
            self.server = ServerProcess(self.project.settings, models=[f"{self.options.model}@production"],
                                        log=self.project.settings.home / "demo" / "serve.log").start()
            self.controller = RolloutController(
                self.project, source=ServingGuardrails(self.project, metrics_url=f"{self.server.url}/metrics"),
                actor="demo")
            try:
                asyncio.run(self._simulate())
            finally:
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
        assert self.controller is not None
        state = self._rollout()
        if self._ab_pending is not None and (state is None or not state.active):
            month, row = self._ab_pending
            self._ab_pending = None
            self._maybe_start_ab(month, row)
        if state is not None and state.active:
            before = state.current
            step = self.controller.step(self.options.model)
            if step.action != "hold":
                month = self.months[now.month - 1 if now.day > 1 else now.month - 2]
                self.note(f"{now:%Y-%m-%d}: rollout of v{state.candidate}: {step.action} "
                          f"(stage {before} → {step.state.current if step.state.active else step.state.status}); "
                          f"{step.reason}", month)
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
        self._evaluate_alerts(row, now)
        if self._ab_route is not None and self._ab_route["month_number"] == month:
            self._finish_ab(ok, row)
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
        row.drift = report.to_dict()
        cur = summarize(current, columns=[c for c in profile.columns if c in current.columns],
                        kinds=profile.kinds)  # type: ignore[arg-type]
        self.last_drift = (report, profile.columns, cur)
        return float(report.drift_share), sorted(report.drifted)

    def _evaluate_alerts(self, row: MonthRow, now: pd.Timestamp) -> None:
        demo = self
        production = row.production

        class Monthly:
            def measure(self, rule: Rule, _now: float) -> dict[tuple[tuple[str, str], ...], float]:
                labels = (("model", demo.options.model),)
                value = row.auc if rule.kind == "metric_below_baseline" else row.drift_share
                return {} if value is None else {labels: float(value)}

            def baseline(self, rule: Rule, labels: Any) -> float | None:
                # The production version's AUC on the gate's out-of-time holdout: what it should score
                # on new months. (Its training metrics come from a random split and run higher.)
                if production is None:
                    return None
                mv = demo.registry.resolve(f"{demo.options.model}@{production}")
                gated = (mv.gate or {}).get("metrics") or {}
                value = gated.get("auc", mv.metrics.get("auc"))
                return None if value is None else float(value)

        actions = ActionRegistry()
        actions.register("retrain", lambda alert: self._retrain_from_alert(alert, now, row))
        rules = [
            Rule(name="DelayedLabelAUCDrop", kind="metric_below_baseline", metric="auc", margin=self.options.auc_margin,
                 model=self.options.model, summary="delayed-label AUC fell below the model's baseline",
                 actions=("retrain",)),
            Rule(name="FeatureDrift", kind="drift_share", threshold=self.options.drift_share - 1e-9,
                 model=self.options.model, summary="share of drifted features above threshold", actions=("retrain",)),
        ]
        evaluator = AlertEvaluator(self.project, rules, measure=Monthly(), actions=actions)
        for alert in evaluator.evaluate(now=now.timestamp()):
            self.note(f"{row.month}: alert {alert.rule} {alert.status}", row)
        if self._retrain is not None:
            self._retrain_and_roll_out(row, now)

    def _retrain_from_alert(self, alert: Any, now: pd.Timestamp, row: MonthRow) -> int:
        start = now - pd.Timedelta(days=self.options.retrain_days)
        params = {"start": start.isoformat(), "end": now.isoformat(), "holdout_days": self.options.holdout_days,
                  "trainer": self.options.trainer, "seed": self.options.seed, "model": self.options.model,
                  "min_auc": self.options.min_auc, "max_regression": self.options.max_regression}
        trigger_id = trigger(RETRAIN.name, f"alert {alert.rule} in {row.month}", params=params, project=self.project,
                             key=f"{alert.rule}:{row.month}")
        self._retrain = {"trigger": trigger_id, "alert": alert.rule}
        return trigger_id

    def _retrain_and_roll_out(self, row: MonthRow, now: pd.Timestamp) -> None:
        assert self.controller is not None
        self._retrain = None
        if self._rollout_active():
            self.note(f"{row.month}: retraining skipped: a rollout is still running", row)
            return
        ran = [t for t in Scheduler(self.project).run(once=True) if t.pipeline == RETRAIN.name]
        if not ran or ran[-1].status != "finished" or ran[-1].pipeline_run_id is None:
            self.note(f"{row.month}: retraining failed: {ran[-1].error if ran else 'the trigger did not run'}", row)
            return
        run_id = ran[-1].pipeline_run_id
        decision: dict[str, Any] = RETRAIN.output(self.project, run_id, "decision")
        self._store_reference(decision["version"], RETRAIN.output(self.project, run_id, "train_set"))
        verdict = "accepted" if decision["accepted"] else "rejected"
        base = decision.get("baseline_auc")
        self.note(f"{row.month}: retrained v{decision['version']} on the last {self.options.retrain_days} days; "
                  f"gate {verdict} (AUC {decision['auc']:.3f} vs production "
                  f"{'n/a' if base is None else f'{base:.3f}'})", row)
        if decision["accepted"]:
            self._end_ab_route()
            self.controller.start(self.options.model, decision["version"], plan=self.options.rollout_plan,
                                  min_requests=self.options.rollout_min_requests, stage_seconds=0.0,
                                  guardrails=RETRAINED_GUARDRAILS)
            self.note(f"{row.month}: rollout of v{decision['version']} started ({self.options.rollout_plan})", row)
            time.sleep(0.8)

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
        # A challenger is a version the gate accepted (the planted broken candidate never went through it).
        earlier = [v.version for v in self.registry.versions(self.options.model)
                   if v.version != production and (v.gate or {}).get("accepted") is True]
        if production is None or not earlier or self._rollout_active():
            return
        challenger = max(earlier)
        RouteTable(self.project).set(self.options.model, [Variant("control", production, 0.5),
                                                          Variant("treatment", challenger, 0.5)],
                                     salt=f"ab-{month}", actor="demo", reason="A/B test")
        self._ab_route = {"month": f"2013-{month:02d}", "month_number": month, "control_version": production,
                          "treatment_version": challenger}
        self.note(f"{row.month}: A/B test for 2013-{month:02d}: v{production} (control) vs v{challenger} "
                  f"(treatment), 50/50 by flight", row)
        time.sleep(0.8)

    def _finish_ab(self, ok: pd.DataFrame, row: MonthRow) -> None:
        assert self._ab_route is not None
        scored = ok[ok["label"].notna() & ok["variant"].isin(["control", "treatment"])].copy()
        scored["log_loss"] = log_losses(scored["label"].to_numpy(), scored["prediction"].to_numpy(), eps=1e-6)
        analysis = analyze_frame(scored, variant_column="variant", metric="log_loss", control="control",
                                 higher_is_better=False, weights={"control": 0.5, "treatment": 0.5})
        data = analysis.as_dict()
        self.ab = {**self._ab_route, "metric": "log_loss (lower is better)", "analysis": data,
                   "decision": data.get("decision"), "reason": data.get("reason")}
        self.note(f"{row.month}: A/B decision: {data.get('decision')} ({data.get('reason')})", row)
        self._end_ab_route()

    def _end_ab_route(self) -> None:
        if self._ab_route is not None:
            RouteTable(self.project).delete(self.options.model, actor="demo", reason="A/B test over")
            self._ab_route = None
            time.sleep(0.8)

    def _start_broken(self, row: MonthRow) -> None:
        from modelmill.demo.faulty import FaultyModel

        assert self.controller is not None
        if self._rollout_active():
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
             ", ".join(short(c) for c in r.drifted[:4]) + ("…" if len(r.drifted) > 4 else ""),
             fmt(r.p50_ms, ".1f"), fmt(r.p99_ms, ".1f"), str(r.production or ""),
             " ".join(f"v{k}:{v}" for k, v in r.versions.items())] for r in rows]


MONTH_COLUMNS = ["month", "predictions", "AUC", "labels", "drift", "drifted", "p50 ms", "p99 ms",
                 "prod", "served by"]
