"""The clicks scenario (``modelmill demo --scenario clicks``): a synthetic click stream with planted
ground truth, driven through modelmill's public surfaces only.

Every step is a ``modelmill`` command in a child process or an HTTP call to a real
``modelmill serve``; the scenario imports no stage of modelmill. It plays the user's part
(time and traffic) and scores what modelmill decided against what the generator planted
(:mod:`modelmill.datasets.clicks`):

1. user profiles and, window by window, click events go through the broker
   (``modelmill ingest publish`` / ``ingest run``) into the offline store;
2. features from definitions (``modelmill features apply`` of :mod:`modelmill.demo.clicks_features`,
   ``features materialize``);
3. the first model: ``modelmill pipeline run modelmill.demo.clicks_pipeline:RETRAIN`` on window 0,
   ``modelmill gate`` on its holdout, ``modelmill models alias clicks production 1``;
4. ``modelmill serve`` on 127.0.0.1; each simulated hour (one monitoring window) every impression is
   asked of the feature route with a client id, and its click is posted to
   ``POST /v1/models/clicks/labels`` under that id;
5. decisions: after each window one round of ``modelmill loop --once`` acts on the ``[models.clicks]``
   table the scenario writes into ``modelmill.toml``: the monitor and the drift rule, the retraining
   the rule queues (:mod:`modelmill.demo.clicks_pipeline`), the gate on the run's holdout, and the
   rollout (canary 10% → 50% → 100%, guardrails on errors, latency and delayed-label loss), one
   step a window;
6. an A/B test (``modelmill experiment create/analyze/stop``) on the promoted model, where the
   generator raises the clicks of impressions the ``treatment`` variant served;
7. each detector's hits and false alarms against the planted drift, and the A/B decision against
   the planted effect's sign.

Windows (hours of simulated time) at default settings: 0 trains; 1–2 are quiet; the drift starts
with window 3; the candidate rolls out over windows 4–6; the A/B test runs over 7–8. With
``--db``/``--online``/``--broker`` the scenario writes them into ``modelmill.toml`` but clears only
its local home: give it servers of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

import modelmill.demo.clicks_features as definitions_module
from modelmill.datasets.clicks import ClickStream, GroundTruth
from modelmill.demo.clicks_features import COUNTRY_CODES
from modelmill.demo.server import free_port
from modelmill.errors import ModelmillError

__all__ = ["ClicksOptions", "ClicksResult", "ClicksScenario", "events_per_window"]

MODEL = "clicks"
PIPELINE = "modelmill.demo.clicks_pipeline:RETRAIN"
SCHEMAS = "modelmill.demo.clicks_features"
START = pd.Timestamp("2024-01-01", tz="UTC")
HOUR = pd.Timedelta(hours=1)
PLANTED = {"session_len": "session_len", "device_ios": "device", "device_web": "device"}  # column -> planted trait
DOWNSTREAM = ("__prediction__",)  # moves because its inputs moved: reported, scored neither way


def events_per_window(users: int) -> int:
    """Impressions per simulated hour: half the users, between 6,000 and 40,000."""
    return int(min(max(users // 2, 6_000), 40_000))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClicksOptions:
    """Scale and schedule of the scenario."""

    users: int = 20_000
    events: int | None = None          # impressions per window (default: events_per_window(users))
    quiet_windows: int = 2             # served windows before the drift
    rollout_windows: int = 3
    ab_windows: int = 2
    drift_shift: float = 1.0
    ab_lift: float = 0.25
    drift_share: float = 0.25          # the drift rule's threshold (share of drifted columns)
    min_auc: float = 0.55              # the gate's minimum AUC on the holdout
    max_regression: float = 0.02       # how much lower than production's AUC on that holdout it may be
    window_seconds: float | None = None  # wall-clock length of one monitoring window (default: from the scale)
    batch: int = 1_000                 # impressions per feature-route request
    seed: int = 0

    @property
    def per_window(self) -> int:
        return self.events or events_per_window(self.users)

    @property
    def drift_window(self) -> int:
        return self.quiet_windows + 1

    @property
    def windows(self) -> int:
        return self.drift_window + self.rollout_windows + self.ab_windows


@dataclasses.dataclass
class WindowRow:
    """One monitoring window of the summary table."""

    window: int
    start: str
    drifted_truth: bool
    predictions: int = 0
    errors: int = 0
    labels: int = 0
    ctr: float | None = None
    served: dict[str, int] = dataclasses.field(default_factory=dict)
    drift: list[dict[str, Any]] = dataclasses.field(default_factory=list)   # per version: share, drifted, status
    alerts: list[str] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)
    traffic_seconds: float = 0.0
    seconds: float = 0.0


@dataclasses.dataclass
class ClicksResult:
    users: int
    per_window: int
    truth: dict[str, Any]
    windows: list[WindowRow]
    detectors: list[dict[str, Any]]
    retrain: dict[str, Any] | None
    rollout: dict[str, Any] | None
    ab: dict[str, Any] | None
    versions: list[int]
    events: list[str]
    seconds: float
    timings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CommandFailed(ModelmillError):
    """A ``modelmill`` command of the scenario exited non-zero."""


def _toml(options: ClicksOptions, window_s: float, backends: dict[str, str]) -> str:
    lines = "".join(f'{k} = "{v}"\n' for k, v in backends.items())
    window = f"{window_s:.0f}s"
    return f'''\
# Written by `modelmill demo --scenario clicks`: the click model's loop, in config.
home = ".modelmill"

[backends]
{lines}
[features]
# The scenario replays simulated hours: online reads are judged at the newest event time seen.
clock = "event"

[serving]
models = ["{MODEL}@production"]

[monitoring]
window = "{window}"               # one simulated hour of traffic
models = ["{MODEL}"]

[monitoring.drift]
drift_share = {options.drift_share}           # a window whose share of drifted columns reaches this fails

[models.{MODEL}]
feature_service = "clicks"

[models.{MODEL}.pipeline]
function = "{PIPELINE}"
params = {{ window_hours = 1.0, holdout_share = 0.25, trainer = "sklearn-hgb", seed = {options.seed} }}

[models.{MODEL}.gate]
label = "clicked"
min = {{ auc = {options.min_auc} }}
max_regression = {{ auc = {options.max_regression} }}

[models.{MODEL}.rules.drift]
share = {options.drift_share}
window = "{window}"

[models.{MODEL}.rollout]
plan = [10, 50, 100]
min_requests = {max(100, options.per_window // 40)}
stage_seconds = "1s"
max_stage_seconds = "{window_s * 4:.0f}s"

[models.{MODEL}.rollout.guardrails]
# A model retrained on drifted traffic is expected to score differently: its delayed-label loss, errors
# and latency judge it, not the shift of its outputs.
max_output_shift = false
'''


class ClicksScenario:
    """Runs the clicks scenario in ``folder`` (its ``modelmill.toml`` and ``.modelmill`` home)."""

    def __init__(self, folder: Path, options: ClicksOptions, *, say: Callable[[str], None] = print,
                 progress: Any = None, fresh: bool = True, backends: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.options = options
        self.say = say
        self.progress = progress
        self.fresh = fresh
        self.backends = {k: v for k, v in (backends or {}).items() if v}
        self.home = folder / ".modelmill"
        self.work = self.home / "scenario"
        self.gen = ClickStream(users=options.users, seed=options.seed, start=START,
                               drift_at=START + options.drift_window * HOUR, drift_shift=options.drift_shift,
                               ab_lift=options.ab_lift)
        self.truth: GroundTruth = self.gen.truth()
        self.traits = self.gen.user_traits()
        self.rows: list[WindowRow] = []
        self.events: list[str] = []
        self.timings: dict[str, float] = {}
        self.url = ""
        # Long enough to hold one window's traffic (a few thousand predictions a second), its clicks' way
        # into the broker and the start of the loop's round, on a busy 2-core machine too.
        self.window_s = options.window_seconds or max(30.0, options.per_window / 1_000 + 20.0)
        self._traffic_ended = 0.0
        self._server: subprocess.Popen[bytes] | None = None
        self._consumer: subprocess.Popen[bytes] | None = None
        self.retrain: dict[str, Any] | None = None
        self.rollout: dict[str, Any] | None = None
        self.ab: dict[str, Any] | None = None
        self._experiment: str | None = None
        self._served_from: dict[int, bool] = {}  # version -> trained on drifted traffic
        self._label_auth: dict[str, str] = {}
        self._frames: dict[int, pd.DataFrame] = {}  # each served window's impressions, variants and clicks

    # ---- plumbing -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}

    def mm(self, *args: str, timeout: float = 600.0, check: bool = True) -> dict[str, Any]:
        """``modelmill ARGS --json`` in the scenario's folder; its JSON answer."""
        out = subprocess.run([sys.executable, "-m", "modelmill", *args, "--json"], cwd=self.folder, env=self.env(),
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0 and check:
            raise CommandFailed(f"modelmill {' '.join(args)} exited {out.returncode}: "
                                f"{(out.stderr or out.stdout).strip()[-1500:]}")
        try:
            answer: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip() else {}
        except json.JSONDecodeError:
            answer = {"text": out.stdout}
        answer.setdefault("_rc", out.returncode)
        return answer

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self.say(f"[bold]▶ {name}[/]")
        yield
        self.timings[name] = round(time.perf_counter() - started, 2)

    def note(self, text: str, row: WindowRow | None = None) -> None:
        self.events.append(text)
        if row is not None:
            row.events.append(text)
        self.say(f"  • {text}")

    def _task(self, description: str, total: int | None) -> Callable[[int], None]:
        if self.progress is None:
            return lambda _n: None
        task = self.progress.add_task(description, total=total)
        return lambda n: self.progress.update(task, completed=n)

    def _through_broker(self, schema: str, frame: pd.DataFrame, name: str) -> int:
        """Publish ``frame`` as events of ``schema`` and consume them into the offline store."""
        path = self.work / f"{name}.parquet"
        # Microseconds: the offline store's resolution (`ingest publish` refuses finer timestamps).
        frame.astype({c: "datetime64[us, UTC]" for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)}
                     ).to_parquet(path, index=False)
        ref = f"{SCHEMAS}:{schema}"
        self.mm("ingest", "publish", str(path), "-s", ref)
        got = self.mm("ingest", "run", "-s", ref, "--group", "scenario", "--max-events", str(len(frame)),
                      "--idle-timeout", "10", "--batch-seconds", "0.5")
        if got.get("dead_letters"):
            self.note(f"{got['dead_letters']} {schema.lower()} events failed validation (dead letters)")
        return int(got.get("written", 0))

    # ---- phases ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.fresh:
            shutil.rmtree(self.home, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.folder / "modelmill.toml").write_text(_toml(self.options, self.window_s, self.backends))
        self.mm("db", "upgrade", check=False)

    def users_and_features(self) -> None:
        with self.phase("1–2 users through the broker; features from definitions"):
            t = self.traits
            profiles = pd.DataFrame({
                "profile_id": "u" + t["user_id"].astype(str),
                "updated_at": START - pd.Timedelta(days=1),
                "user_id": t["user_id"].astype("int64"),
                "tenure_days": t["tenure_days"].astype("float64"),
                "affinity": t["affinity"].astype("float64"),
                "country_code": t["country"].map(COUNTRY_CODES).astype("float64"),
            })
            started = time.perf_counter()
            n = self._through_broker("USERS", profiles, "users")
            self.note(f"users: {n:,} profile events through the broker into the offline store "
                      f"({n / max(time.perf_counter() - started, 1e-9):,.0f} events/s)")
            applied = self.mm("features", "apply", definitions_module.__file__ or "")
            # Every profile is stamped a day before the first hour: materialise that day explicitly (the
            # event clock's default end is the newest event time, which a half-open range leaves out).
            mat = self.mm("features", "materialize", "--start", (START - pd.Timedelta(days=2)).isoformat(),
                          "--end", START.isoformat())
            self.note(f"applied {len(applied.get('applied', []))} definitions; materialized "
                      f"{_rows(mat):,} user rows into the online store")

    def train_first(self) -> None:
        with self.phase("3 first model: window 0 through the broker, pipeline, gate, production"):
            frame = self.gen.window(0, self.options.per_window, traits=self.traits)
            frame["variant"] = ""
            frame["clicked"] = self.gen.clicks(frame, seed=0)
            self._through_broker("CLICKS", _click_events(frame), "clicks-0")
            answer = self.mm("pipeline", "run", PIPELINE, *self._retrain_params(), "--reason", "first model")
            lineage = answer.get("lineage") or {}
            version = int(str(lineage.get("model_version", "@0")).rpartition("@")[2])
            gated = self.mm("gate", "--candidate", f"{MODEL}@{version}", "--data", str(lineage.get("holdout_path")),
                            "--label", "clicked", "--min", f"auc={self.options.min_auc}", "--actor", "scenario",
                            check=False)
            if gated["_rc"] != 0:
                raise ModelmillError(f"the first model was rejected by the gate: {gated.get('reason', gated)}")
            decision = {"auc": (gated.get("metrics") or {}).get("auc"), "rows": gated.get("rows")}
            self.mm("models", "alias", MODEL, "production", str(version), "--reason", "first model, gated",
                    "--actor", "scenario")
            self._served_from[version] = False
            self.note(f"{MODEL}@{version} is production (holdout AUC {decision['auc']:.3f} on "
                      f"{decision['rows']:,} impressions of window 0)")

    def _retrain_params(self) -> list[str]:
        params = {"model": MODEL, "window_hours": 1.0, "holdout_share": 0.25, "trainer": "sklearn-hgb",
                  "seed": self.options.seed}
        return [a for k, v in params.items() for a in ("-p", f"{k}={json.dumps(v)}")]

    def start_server(self) -> None:
        # Posting ground truth is a control action: a token of role label (it may not change routes).
        token = self.mm("token", "create", "--role", "label", "--name", "scenario-labels")
        self._label_auth = {"Authorization": f"Bearer {token.get('secret') or token.get('token')}"}
        port = free_port()
        log = open(self.work / "serve.log", "ab")  # noqa: SIM115 - lives with the child
        self._server = subprocess.Popen([sys.executable, "-m", "modelmill", "serve", "--port", str(port)],
                                        cwd=self.folder, env=self.env(), stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise ModelmillError(f"modelmill serve exited {self._server.returncode}; see {self.work}/serve.log")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise ModelmillError(f"modelmill serve was not ready after 90 s; see {self.work}/serve.log")

    def stop(self) -> None:
        for proc in (self._consumer, self._server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    # ---- traffic --------------------------------------------------------------------------------

    def serve_window(self, index: int, client: httpx.Client) -> WindowRow:
        """Every impression of window ``index`` asked of the feature route, its click drawn and posted."""
        frame = self.gen.window(index, self.options.per_window, traits=self.traits)
        row = WindowRow(window=index, start=(START + index * HOUR).isoformat(),
                        drifted_truth=self.truth.drifted(START + index * HOUR))
        update = self._task(f"window {index}: impressions", len(frame))
        variants = np.full(len(frame), "", dtype=object)
        versions = np.zeros(len(frame), dtype=np.int64)
        ok = np.zeros(len(frame), dtype=bool)
        clicked = np.zeros(len(frame), dtype=np.int8)
        b = self.options.batch
        for lo in range(0, len(frame), b):
            part = frame.iloc[lo:lo + b]
            answers = self._predict(client, part)
            for i, a in enumerate(answers):
                if "prediction" in a:
                    ok[lo + i] = True
                    variants[lo + i] = a.get("variant") or ""
                    versions[lo + i] = int(a.get("version") or 0)
            treated = (variants[lo:lo + len(part)] == "treatment") & (self._experiment is not None)
            clicked[lo:lo + len(part)] = self.gen.clicks(part, treated, seed=index * 1_000_000 + lo)
            served = ok[lo:lo + len(part)]
            labels = [{"id": f"imp-{e}", "label": int(c)}
                      for e, c, s in zip(part["event_id"], clicked[lo:lo + len(part)], served, strict=True) if s]
            if labels:
                got = client.post(f"/v1/models/{MODEL}/labels", json={"labels": labels}, headers=self._label_auth)
                if got.status_code != 200:
                    raise ModelmillError(f"the labels route answered {got.status_code}: {got.text[:300]}")
                counts = got.json()  # unknown: stored, for a prediction the log has not flushed yet
                row.labels += int(counts["accepted"]) + int(counts["unknown"])
            update(lo + len(part))
        row.predictions = int(ok.sum())
        row.errors = len(frame) - row.predictions
        row.ctr = float(clicked[ok].mean()) if ok.any() else None
        row.served = {str(v): int(n) for v, n in zip(*np.unique(versions[ok], return_counts=True), strict=True)}
        frame["variant"] = variants
        frame["clicked"] = clicked
        self._frames[index] = frame[ok]
        return row

    def _publish_clicks(self, index: int) -> None:
        path = self.work / f"clicks-{index}.parquet"
        _click_events(self._frames[index]).astype({"ts": "datetime64[us, UTC]"}).to_parquet(path, index=False)
        self.mm("ingest", "publish", str(path), "-s", f"{SCHEMAS}:CLICKS")

    def start_consumer(self) -> None:
        """``modelmill ingest run`` of the clicks stream, running as long as the server does."""
        log = open(self.work / "ingest.log", "ab")  # noqa: SIM115 - lives with the child
        self._consumer = subprocess.Popen(
            [sys.executable, "-m", "modelmill", "ingest", "run", "-s", f"{SCHEMAS}:CLICKS", "--group", "scenario",
             "--batch-seconds", "0.5", "--json"], cwd=self.folder, env=self.env(), stdout=log, stderr=log)

    def _predict(self, client: httpx.Client, part: pd.DataFrame) -> list[dict[str, Any]]:
        device = part["device"].to_numpy()
        instances = [{"id": f"imp-{e}", "routing_key": f"user-{u}", "entities": {"user_id": int(u)},
                      "features": {"session_len": float(s), "device_ios": float(d == "ios"),
                                   "device_web": float(d == "web")}}
                     for e, u, s, d in zip(part["event_id"], part["user_id"], part["session_len"], device, strict=True)]
        got = client.post(f"/v1/models/{MODEL}/predict", json={"instances": instances})
        if got.status_code != 200:
            raise ModelmillError(f"the feature route answered {got.status_code}: {got.text[:300]}")
        answers: list[dict[str, Any]] = got.json()["predictions"]
        return answers

    # ---- decisions ------------------------------------------------------------------------------

    def decide(self, row: WindowRow) -> None:
        """The loop's round at the end of a window (``modelmill loop --once``): monitor and rules, the
        retraining they start, the gate, the rollout's next step."""
        answer = self.mm("loop", "--once", "--holder", "clicks-scenario", timeout=900)
        last = answer.get("last_round") or {}
        if not last.get("leader"):
            self.note(f"window {row.window}: the loop round did not lead ({last.get('following')} holds the lease)",
                      row)
        phases = (last.get("models") or {}).get(MODEL) or {}
        monitor = phases.get("monitor") or {}
        if monitor.get("error"):
            self.note(f"window {row.window}: the loop's monitor failed: {monitor['error']}", row)
        for w in monitor.get("windows", []):
            row.drift.append({"version": int(w["version"]), "drift_share": w.get("drift_share"),
                              "drifted": list(w.get("drifted", [])), "status": w.get("status"),
                              "n_rows": w.get("n_rows")})
        seen = sum(int(d.get("n_rows") or 0) for d in row.drift)
        if seen < row.predictions:
            # Said, not hidden: a detector with no data in a window is neither a hit nor quiet.
            self.note(f"window {row.window}: the monitoring window saw {seen:,} of the {row.predictions:,} "
                      f"predictions (the round started {time.monotonic() - self._traffic_ended:.0f} s after the "
                      f"traffic, window {self.window_s:.0f} s: the machine is busier than the window allows)", row)
        for a in monitor.get("alerts_changed", []):
            row.alerts.append(f"{a['rule']} {a['status']}")
            self.note(f"window {row.window}: alert {a['rule']} {a['status']}", row)
        for t in last.get("scheduler") or []:
            if t.get("status") != "finished":
                self.note(f"window {row.window}: retraining {t.get('status')}: {t.get('error')}", row)
        for d in phases.get("decisions") or []:
            self._decided(d, row)
        step = phases.get("rollout")
        if isinstance(step, dict) and step.get("action"):
            if step.get("error"):
                self.note(f"window {row.window}: rollout step failed: {step['error']}", row)
                return
            self.rollout = {**(self.rollout or {}), "candidate": step.get("candidate"), "status": step.get("status"),
                            "stage": step.get("stage"), "reason": step.get("reason")}
            self.rollout.setdefault("steps", []).append(f"window {row.window}: {step.get('action')} → "
                                                         f"{step.get('stage')}")
            self.note(f"window {row.window}: rollout of v{step.get('candidate')}: {step.get('action')} "
                      f"(stage {step.get('stage')}, {step.get('status')}); {step.get('reason')}", row)
            if step.get("status") not in ("running", "active", "pending"):
                aliases = self.mm("models", "alias", MODEL, "production", check=False)
                self.rollout["production"] = aliases.get("version")

    def _decided(self, d: dict[str, Any], row: WindowRow) -> None:
        if not isinstance(d, dict) or d.get("version") is None:
            if isinstance(d, dict) and d.get("status"):
                self.note(f"window {row.window}: loop decision {d.get('status')}: {d.get('reason')}", row)
            return
        version = int(d["version"])
        self._served_from[version] = True  # retrained on the newest hour, past the drift
        gate = d.get("gate") or {}
        metrics, base = gate.get("metrics") or {}, gate.get("baseline_metrics") or {}
        self.retrain = {"window": row.window, "version": version, "status": d.get("status"),
                        "accepted": d.get("status") in ("accepted", "rolling_out", "waiting"),
                        "auc": metrics.get("auc"), "baseline_auc": base.get("auc"), "reason": d.get("reason")
                        or gate.get("reason")}
        self.note(f"window {row.window}: the loop retrained v{version} on the newest hour; gate: {d.get('status')} "
                  f"(AUC {_num(metrics.get('auc'))} vs production {_num(base.get('auc'))})", row)

    # ---- A/B test -------------------------------------------------------------------------------

    def start_ab(self, row: WindowRow) -> None:
        aliases = self.mm("models", "alias", MODEL, "production", check=False)
        production = aliases.get("version") or max(self._served_from)
        name = f"card-redesign-{int(time.time())}"
        created = self.mm("experiment", "create", name, "--model", MODEL, "-v", f"control={production}:50",
                          "-v", f"treatment={production}:50", "--metric", "conversion", "--unit", "user_id",
                          check=False)
        if created["_rc"] != 0:
            self.note(f"window {row.window}: the A/B test could not start: {created}", row)
            return
        self._experiment = name
        self.ab = {"experiment": name, "version": production, "metric": "conversion (clicks per impression)",
                   "windows": []}
        self.note(f"from window {row.window + 1}: A/B test {name}: the treatment variant shows the redesigned card "
                  f"(planted: log-odds {self.options.ab_lift:+.2f}), 50/50 by user, on v{production}", row)
        time.sleep(1.0)

    def finish_ab(self, row: WindowRow) -> None:
        assert self.ab is not None and self._experiment is not None
        analysis = self.mm("experiment", "analyze", self._experiment, check=False)
        if analysis["_rc"] != 0:
            self.note(f"window {row.window}: the A/B analysis failed: {str(analysis)[:300]}", row)
        self.mm("experiment", "stop", self._experiment, check=False)
        self._experiment = None
        served = pd.concat([self._frames[w] for w in self.ab["windows"]])
        treated = served[served["variant"] == "treatment"]
        true_effect = self.gen.ab_effect(treated) if len(treated) else None
        comparison = (analysis.get("comparisons") or [analysis])[0]
        lift = comparison.get("lift_abs")
        right_sign = lift is not None and int(np.sign(lift)) == self.truth.ab_sign
        self.ab.update(decision=comparison.get("decision"), reason=comparison.get("reason"), measured_lift=lift,
                       ci=comparison.get("ci_abs"), p_value=comparison.get("p_value"), true_effect=true_effect,
                       right_sign=right_sign,
                       found=bool(right_sign and comparison.get("p_value") is not None
                                  and comparison["p_value"] < comparison.get("alpha", 0.05)),
                       analysis=analysis)
        self.note(f"window {row.window}: A/B decision {self.ab['decision']} ({self.ab['reason']}); "
                  f"true effect {true_effect:+.4f} clicks per impression", row)

    # ---- the whole run --------------------------------------------------------------------------

    def run(self) -> ClicksResult:
        started = time.perf_counter()
        self.prepare()
        try:
            self.users_and_features()
            self.train_first()
            with self.phase("4–6 serve, label, monitor, retrain, roll out, A/B test: hour by hour"):
                self.start_server()
                self.start_consumer()
                with httpx.Client(base_url=self.url, timeout=120.0) as client:
                    for index in range(1, self.options.windows + 1):
                        self._window(index, client)
        finally:
            self.stop()
        listed = self.mm("models", "list", check=False)
        versions: list[int] = next((m["versions"] for m in listed.get("models", []) if m.get("name") == MODEL), [])
        return ClicksResult(users=self.options.users, per_window=self.options.per_window, truth=self.truth.as_dict(),
                            windows=self.rows, detectors=score_detectors(self.rows, self._served_from),
                            retrain=self.retrain, rollout=self.rollout, ab=_public_ab(self.ab), versions=versions,
                            events=self.events, seconds=round(time.perf_counter() - started, 1), timings=self.timings)

    def _window(self, index: int, client: httpx.Client) -> None:
        o = self.options
        if index == o.drift_window + o.rollout_windows + 1:
            self.start_ab(self.rows[-1])
        # A monitoring round looks at the last window_s seconds of the log: the window before must have left
        # it before this window's traffic starts, so that a round sees one window alone.
        time.sleep(max(0.0, self._traffic_ended + self.window_s - time.monotonic()))
        opened = time.monotonic()
        row = self.serve_window(index, client)
        self._traffic_ended = time.monotonic()
        row.traffic_seconds = round(self._traffic_ended - opened, 1)
        self.rows.append(row)
        if self.ab is not None and self._experiment is not None:
            self.ab["windows"].append(index)
        # The window's clicks, known now, into the broker; the consumer running beside the server writes
        # them to the offline store, where a retraining started by this window's round reads them.
        self._publish_clicks(index)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - self._traffic_ended)))  # the log and the consumer flush
        self.decide(row)
        if index == o.windows and self._experiment is not None:
            self.finish_ab(row)
        row.seconds = round(time.monotonic() - opened, 1)
        share = ", ".join(f"v{d['version']} {d['drift_share']:.2f}" for d in row.drift
                          if d.get("drift_share") is not None) or "n/a"
        self.say(f"  window {index} ({'drifted' if row.drifted_truth else 'quiet'}): {row.predictions:,} "
                 f"predictions, {row.labels:,} labels, CTR {row.ctr or 0:.3f}, drift share {share}, "
                 f"served {row.served} ({row.traffic_seconds:.0f} s of traffic)")


# ---- scoring ------------------------------------------------------------------------------------

def score_detectors(rows: Sequence[WindowRow], trained_on_drift: dict[int, bool]) -> list[dict[str, Any]]:
    """Each detector's hits, misses and false alarms against the planted drift.

    A (window, version) is drifted when the window's traffic is past the planted drift and the
    version's reference (its training data) is not: that is when a detector should speak.
    ``dataset drift`` is the monitor's verdict per window; each input column's test is scored on
    whether it flagged a column the generator moved (``session_len``, ``device_*``) or one it did
    not. The prediction itself moves because its inputs did: it is listed, not scored.
    """
    dataset: dict[str, Any] = {"detector": "dataset drift (monitor)", "hits": 0, "misses": 0, "false_alarms": 0,
               "quiet_windows": 0, "first_hit_window": None}
    columns: dict[str, dict[str, Any]] = {}
    for row in rows:
        for d in row.drift:
            if d.get("drift_share") is None:
                continue
            should = row.drifted_truth and not trained_on_drift.get(int(d["version"]), False)
            flagged = d.get("status") == "fail"
            if should and flagged:
                dataset["hits"] += 1
                dataset["first_hit_window"] = dataset["first_hit_window"] or row.window
            elif should:
                dataset["misses"] += 1
            elif flagged:
                dataset["false_alarms"] += 1
            else:
                dataset["quiet_windows"] += 1
            for name in set(d.get("drifted", [])) | set(PLANTED):
                c = columns.setdefault(name, {"detector": f"column {name}", "hits": 0, "misses": 0,
                                              "false_alarms": 0, "planted": name in PLANTED})
                col_flagged = name in d.get("drifted", [])
                planted = name in PLANTED and should
                if name in DOWNSTREAM:
                    c["flagged"] = c.get("flagged", 0) + int(col_flagged)
                elif planted and col_flagged:
                    c["hits"] += 1
                elif planted:
                    c["misses"] += 1
                elif col_flagged:
                    c["false_alarms"] += 1
    return [dataset, *sorted(columns.values(), key=lambda c: (not c["planted"], c["detector"]))]


def _click_events(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"event_id": "imp-" + frame["event_id"].astype(str), "ts": frame["ts"],
                         "user_id": frame["user_id"].astype("int64"), "session_len": frame["session_len"],
                         "device": frame["device"].astype(str), "variant": frame["variant"].astype(str),
                         "clicked": frame["clicked"].astype("int64")})


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def _rows(materialized: dict[str, Any]) -> int:
    return sum(int(v.get("rows", 0)) for v in materialized.get("materialized", []))


def _public_ab(ab: dict[str, Any] | None) -> dict[str, Any] | None:
    if ab is None:
        return None
    return {k: v for k, v in ab.items() if k != "analysis"} | {"analysis": ab.get("analysis")}
