"""The console's pages: each reads the project through the control plane and returns its HTML body.

Every reader here is what ``modelmill models|rollout|experiment|monitor|runs|ingest`` and the ``/v1``
routes call (:mod:`modelmill.control`, :class:`~modelmill.training.Runs`,
:class:`~modelmill.ingest.deadletters.DeadLetters`), so the console shows what the CLI prints. The
functions are blocking (database, offline store): :mod:`modelmill.console.app` runs them off the
event loop. Each returns a :class:`View`: the title, the body and the navigation entry it belongs to.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy as sa

from modelmill import control
from modelmill.console.charts import Point, bar_chart, human, interval, line_chart
from modelmill.console.layout import Raw, badge, esc, link, table, when
from modelmill.errors import InputError, ModelmillError
from modelmill.monitoring.report import drift_charts, latency_charts, metric_charts
from modelmill.rollout.controller import ACTIVE, RolloutController

if TYPE_CHECKING:
    import pandas as pd

    from modelmill.experiments import Experiment

__all__ = ["View", "dead_letter", "experiment", "experiments", "ingestion", "model", "monitoring", "overview",
           "rollout", "rollouts", "runs", "runs_compare", "version"]


@dataclass(frozen=True)
class View:
    """A rendered page body: ``title``, ``body`` (HTML), ``active`` navigation entry, ``poll`` seconds."""

    title: str
    body: str
    active: str = ""
    poll: int | None = None


@dataclass(frozen=True)
class Context:
    """What a page needs: the project, the console's base path and who is looking."""

    project: Any
    base: str
    can_act: bool = False
    csrf: str = ""


def _q(part: Any) -> str:
    return quote(str(part), safe="")


def _section(title: str, body: str, *, id: str | None = None) -> str:
    anchor = f' id="{esc(id)}"' if id else ""
    return f"<section{anchor}><h2>{esc(title)}</h2>{body}</section>"


def _grid(items: Sequence[str]) -> str:
    return f'<div class="grid">{"".join(items)}</div>' if items else '<p class="empty">no data yet</p>'


# ---- overview ------------------------------------------------------------------------------------


def _split(route: Mapping[str, Any] | None) -> str:
    if not route:
        return "–"
    live = [v for v in route["variants"] if not v.get("shadow")]
    total = sum(float(v.get("weight", 0)) for v in live) or 1.0
    parts = [f"{v['name']} ({_ver(v['version'])}) {100 * float(v['weight']) / total:.0f}%" for v in live]
    parts += [f"{v['name']} ({_ver(v['version'])}) shadow" for v in route["variants"] if v.get("shadow")]
    return ", ".join(parts)


def _ver(version: Any) -> str:
    """``v3`` for a version number, the alias itself (``production``) otherwise."""
    return f"v{version}" if isinstance(version, int) or str(version).isdigit() else str(version)


def overview(ctx: Context) -> View:
    """Every model with its production version and versions, the live traffic split, active rollouts,
    alerts firing, the monitor's last run and each stream's ingestion lag."""
    from modelmill.serving.routing import RouteTable
    from modelmill.store.tables.monitoring import monitoring_alerts, monitoring_windows

    project, base = ctx.project, ctx.base
    models = control.list_models(project)["models"]
    routes = {name: r.as_dict() for name, r in RouteTable(project).all().items()}
    active = {r["model"]: r for r in control.list_rollouts(project)["rollouts"]}
    with project.db.engine.connect() as conn:
        last_window = conn.execute(sa.select(sa.func.max(monitoring_windows.c.at))).scalar()
        firing = conn.execute(sa.select(monitoring_alerts).where(monitoring_alerts.c.state == "firing")
                              .order_by(monitoring_alerts.c.rule)).all()
    rows = []
    for m in models:
        name = m["name"]
        versions = Raw(", ".join(str(link(base, f"models/{_q(name)}/versions/{v}", f"v{v}")) for v in m["versions"]))
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m["aliases"].items())) or "–"
        prod = m["aliases"].get("production")
        ro = active.get(name)
        rollout_cell = link(base, f"rollouts/{_q(name)}", f"v{ro['candidate']} at {ro['stage']}") if ro else \
            link(base, f"rollouts/{_q(name)}", "history")
        rows.append([link(base, f"models/{_q(name)}", name), f"v{prod}" if prod is not None else "none",
                     versions, aliases, _split(routes.get(name)), rollout_cell])
    body = _section("Models", table(["model", "production", "versions", "aliases", "live traffic", "rollout"],
                                    rows, empty="no model registered yet: run modelmill train or modelmill demo"))
    alerts = table(["rule", "labels", "value", "since"],
                   [[a.rule, ", ".join(f"{k}={v}" for k, v in sorted((a.labels or {}).items())), a.value,
                     when(a.started_at)] for a in firing], empty="no alert firing")
    body += _section("Alerts firing", alerts)
    monitor_line = (f"<p>The monitor's last window was judged at <b>{when(last_window)}</b> "
                    f"({link(base, 'monitoring', 'monitoring')}).</p>" if last_window is not None else
                    "<p class='empty'>The monitor has not run yet: no data (modelmill monitor, or modelmill loop).</p>")
    body += _section("Monitoring", monitor_line)
    body += _section("Ingestion", _lag_table(project, base))
    return View("Overview", body, "")


def _streams(project: Any) -> list[Any]:
    from modelmill.store.tables.ingest import ingest_batches as b

    with project.db.engine.connect() as conn:
        return conn.execute(sa.select(b.c.table_name, b.c.stream, sa.func.count().label("batches"),
                                      sa.func.sum(b.c.rows).label("rows"), sa.func.min(b.c.created_at).label("first"),
                                      sa.func.max(b.c.created_at).label("last"))
                            .group_by(b.c.table_name, b.c.stream).order_by(b.c.table_name, b.c.stream)).all()


def _lag_table(project: Any, base: str) -> str:
    now = time.time()
    rows = [[r.stream, r.table_name, int(r.rows or 0), when(r.last), f"{human(max(now - float(r.last), 0.0))} s"]
            for r in _streams(project)]
    return table(["stream", "table", "rows", "last batch", "lag (since last batch)"], rows,
                 empty="nothing ingested yet: no data")


# ---- runs ----------------------------------------------------------------------------------------


def runs(ctx: Context, filter_string: str, experiments: Sequence[str], order_by: Sequence[str]) -> View:
    """Runs matching ``filter_string`` (the filter language of ``modelmill runs search``), to compare."""
    from modelmill.training import Runs

    error = ""
    try:
        infos = Runs(ctx.project).search(filter_string, experiments=list(experiments) or None,
                                         order_by=list(order_by), max_results=200)
    except InputError as exc:
        infos, error = [], f'<p class="error" role="alert">{esc(exc.message)}</p>'
    form = (f'<form method="get" action="{esc(ctx.base)}/runs" class="search" role="search">'
            f'<label for="filter">Filter</label><input id="filter" name="filter" size="60" '
            f'value="{esc(filter_string)}" placeholder="metrics.auc &gt; 0.7 and params.max_depth = 6">'
            f'<label for="order_by">Order by</label><input id="order_by" name="order_by" size="22" '
            f'value="{esc(order_by[0] if order_by else "")}" placeholder="metrics.auc DESC">'
            f'<button type="submit">Search</button></form>{error}')
    rows = []
    for i in infos:
        metrics = ", ".join(f"{k}={human(v['last'])}" for k, v in sorted(i.metrics.items())
                            if isinstance(v.get("last"), int | float))
        params = ", ".join(f"{k}={v}" for k, v in sorted(i.params.items()))
        box = Raw(f'<input type="checkbox" name="run" value="{esc(i.run_id)}" aria-label="compare {esc(i.run_id)}">')
        rows.append([box, Raw(f"<code>{esc(i.run_id[:12])}</code>"), i.experiment, badge(i.status),
                     when(i.start_time), params[:120], metrics[:120]])
    listing = table(["", "run", "experiment", "status", "started", "params", "metrics (last)"], rows,
                    empty="no run matches")
    body = form + (f'<form method="get" action="{esc(ctx.base)}/runs/compare" id="compare-form">'
                   f'<p>{len(infos)} runs. Tick two or more, then <button type="submit">Compare</button></p>'
                   f"{listing}</form>")
    return View("Runs", body, "runs")


def runs_compare(ctx: Context, run_ids: Sequence[str]) -> View:
    """Params side by side with the differences marked, and every metric's curves overlaid."""
    from modelmill.training import Runs

    if len(run_ids) < 2:
        raise InputError("run", "give at least two runs to compare (tick them on the runs page)", list(run_ids))
    store = Runs(ctx.project)
    result = store.compare(list(run_ids))
    ids = [r["run_id"] for r in result["runs"]]
    short = {i: i[:8] for i in ids}
    head = ["", *(short[i] for i in ids)]
    rows = []
    for key, values in result["params"].items():
        differs = key in result["differs"]
        label = Raw(f'<span class="{"differs" if differs else ""}">{esc(key)}{" ≠" if differs else ""}</span>')
        rows.append([label, *(values.get(i) for i in ids)])
    params = table(head, rows, empty="no params logged", cls="compare")
    last = table(head, [[k, *(v.get(i) for i in ids)] for k, v in result["metrics"].items()], empty="no metrics")
    charts = []
    for key in result["metrics"]:
        series = {}
        for i in ids:
            points = store.history(i, key)
            if points:
                series[short[i]] = [Point(float(p.step), float(p.value)) for p in points]
        if series and max(len(s) for s in series.values()) > 1:
            charts.append(line_chart(key, series, y_label=key, time_axis=False, x_label="step", auto_gaps=False))
    body = (_section("Metric curves", _grid(charts)) + _section("Params (≠ marks a difference)", params)
            + _section("Metrics (last value)", last))
    return View(f"Compare {len(ids)} runs", body, "runs")


# ---- models --------------------------------------------------------------------------------------


def model(ctx: Context, name: str) -> View:
    """Every version of ``name`` with its gate decision, aliases and checksum."""
    listed = control.list_versions(ctx.project, name)
    rows = []
    for v in reversed(listed["versions"]):
        gate = v.get("gate") or {}
        rows.append([link(ctx.base, f"models/{_q(name)}/versions/{v['version']}", f"v{v['version']}"),
                     when(v["created_at"]), ", ".join(v.get("aliases") or []) or "–", v.get("flavor"),
                     badge(gate.get("status") or gate.get("decision")) if gate else badge(None),
                     Raw(f"<code>{esc((v.get('sha256') or '')[:16])}</code>")])
    body = _section("Versions", table(["version", "registered", "aliases", "flavor", "gate", "sha256"], rows))
    return View(f"Model {name}", body, "")


def version(ctx: Context, name: str, number: int) -> View:
    """One version's story: lineage, run, gate decisions with thresholds, alias history, signature, checksum."""
    d = control.version_detail(ctx.project, f"{name}@{number}")
    lineage = d.get("lineage") or {}
    run = d.get("run") or {}
    chain = []
    if run:
        chain.append(f"run <code>{esc(run.get('run_id'))}</code> ({esc(run.get('experiment'))}, "
                     f"{esc(run.get('status'))})")
    for key in ("training_set", "data_snapshot", "dataset", "feature_service", "feature_version", "features"):
        if lineage.get(key) is not None:
            chain.append(f"{esc(key.replace('_', ' '))} <code>{esc(_short(lineage[key]))}</code>")
    if run.get("data_snapshot") and "data_snapshot" not in lineage:
        chain.append(f"training set <code>{esc(run['data_snapshot'])}</code>")
    if run.get("feature_version") and "feature_version" not in lineage:
        chain.append(f"feature definitions <code>{esc(run['feature_version'])}</code>")
    lineage_html = ("<p class='lineage'>" + " → ".join(chain) + "</p>") if chain else "<p class='empty'>no lineage</p>"
    other = {k: v for k, v in lineage.items() if k not in ("training_set", "data_snapshot", "dataset",
                                                          "feature_service", "feature_version", "features")}
    if other:
        lineage_html += table(["lineage", "value"], [[k, _short(v)] for k, v in sorted(other.items())])
    gates = table(["at", "actor", "decision", "checks and thresholds"],
                  [[when(g["at"]), g["actor"], badge(g["decision"].get("status") or g["decision"].get("decision")),
                    Raw(_gate_checks(g["decision"]))] for g in d["gate_history"]], empty="no gate decision recorded")
    aliases = table(["at", "actor", "alias", "from", "to", "reason"],
                    [[when(c.get("at")), c.get("actor"), c.get("alias"), _v(c.get("previous")), _v(c.get("version")),
                      c.get("reason")] for c in d["alias_history"]], empty="no alias has pointed at this version")
    sig = d.get("signature") or {}
    signature = table(["side", "field", "dtype"], [[side, f["name"], f["dtype"]] for side in ("inputs", "outputs")
                                                   for f in sig.get(side, [])])
    facts = table(["", ""], [["flavor", d.get("flavor")], ["registered", when(d.get("created_at"))],
                             ["aliases", ", ".join(d.get("aliases") or []) or "–"],
                             ["artifact", d.get("artifact_path")], ["size (bytes)", d.get("size")],
                             ["sha256", Raw(f"<code>{esc(d.get('sha256'))}</code>")]])
    metrics = table(["metric", "value"], sorted((d.get("metrics") or {}).items()), empty="no metrics")
    body = (_section("Version", facts) + _section("Lineage: run → training set → feature definitions", lineage_html)
            + _section("Gate decisions", gates) + _section("Alias history (audit trail)", aliases)
            + _section("Signature", signature) + _section("Metrics", metrics))
    return View(f"{name} v{number}", body, "")


def _v(x: Any) -> str:
    return "–" if x is None else f"v{x}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _gate_checks(decision: Mapping[str, Any]) -> str:
    checks = decision.get("checks")
    if isinstance(checks, list) and checks:
        rows = []
        for c in checks:
            if isinstance(c, Mapping):
                rows.append(f"<li>{badge(c.get('status') or ('pass' if c.get('passed') else 'fail'))} "
                            f"{esc(c.get('name') or c.get('check') or c.get('metric'))}: "
                            f"{esc(human(c.get('value')))} vs threshold {esc(human(c.get('threshold')))}"
                            f"{(' — ' + esc(c.get('message') or c.get('reason'))) if (c.get('message') or c.get('reason')) else ''}"
                            "</li>")
        return f"<ul class='checks'>{''.join(rows)}</ul>"
    rest = {k: v for k, v in decision.items() if k not in ("status", "decision")}
    return esc(_short(rest)) if rest else "–"


# ---- rollouts ------------------------------------------------------------------------------------


def rollouts(ctx: Context) -> View:
    """The active rollouts and every model's newest one."""
    active = control.list_rollouts(ctx.project)["rollouts"]
    rows = [[link(ctx.base, f"rollouts/{_q(r['model'])}", r["model"]), f"v{r['candidate']}", str(r["baseline"]),
             r["stage"], badge(r["status"]), when(r["updated_at"])] for r in active]
    body = _section("Active rollouts", table(["model", "candidate", "baseline", "stage", "status", "updated"], rows,
                                             empty="no rollout is active"))
    models = control.list_models(ctx.project)["models"]
    body += _section("Every model's newest rollout", "<ul>" + "".join(
        f"<li>{link(ctx.base, 'rollouts/' + _q(m['name']), m['name'])}</li>" for m in models) + "</ul>")
    return View("Rollouts", body, "rollouts")


#: Each guardrail: the Guardrails limit that sets it, the observed value it compares, and how.
_CHECKS = (("error_rate", "max_error_rate_increase", "error_rate", "increase over the baseline at most"),
           ("latency_p95", "max_latency_ratio", "latency_p95_ms", "ratio to the baseline at most"),
           ("output_shift", "max_output_shift", None, "KS distance of the outputs at most"),
           ("label_loss", "max_label_loss_increase", "label_loss", "increase over the baseline at most"))


def _rollout_history(project: Any, name: str) -> list[dict[str, Any]]:
    """Every rollout of ``name``, newest first."""
    from modelmill.rollout.controller import RolloutState
    from modelmill.store.tables.experiments import rollouts as t

    with project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.model == name).order_by(t.c.id.desc()).limit(50)).all()
    return [RolloutState.from_row(row).as_dict() for row in rows]


def rollout(ctx: Context, name: str, rollout_id: int | None = None) -> View:
    """A rollout (the model's newest, or ``rollout_id``): the live stage and split, each guardrail against
    its limit with its sample size, the events, (admin) the promote and rollback buttons, and the model's
    earlier rollouts."""
    from modelmill.serving.routing import RouteTable

    history = _rollout_history(ctx.project, name)
    if rollout_id is None:
        status = control.rollout_status(ctx.project, name)
        r, events = status["rollout"], status["events"]
    else:
        picked = [h for h in history if h["id"] == rollout_id]
        if not picked:
            raise InputError("id", f"is not a rollout of {name}", rollout_id)
        r, events = picked[0], RolloutController(ctx.project).events(rollout_id)
    try:
        route = RouteTable(ctx.project).get(name).as_dict()
    except ModelmillError:
        route = None
    stages = " → ".join(f"<b>{esc(s)}</b>" if str(s) == str(r["stage"]) else esc(s) for s in r["plan"])
    facts = table(["", ""], [["candidate", f"v{r['candidate']}"], ["baseline", str(r["baseline"])],
                             ["status", badge(r["status"])], ["stage", Raw(stages)],
                             ["live traffic", _split(route)], ["stage started", when(r.get("stage_started_at"))],
                             ["reason", r.get("reason") or "–"]])
    observed, breaches, verdicts, judged_at = _last_observation(events)
    g = r["guardrails"]
    rows = []
    for check, limit_key, observed_key, how in _CHECKS:
        limit = g.get(limit_key)
        breach = breaches.get(check)
        cand = (observed or {}).get("candidate") or {}
        stab = (observed or {}).get("stable") or {}
        if breach is not None:
            c_val, b_val = breach.get("candidate"), breach.get("baseline")
        elif observed_key is not None:
            c_val, b_val = cand.get(observed_key), stab.get(observed_key)
        else:
            c_val = b_val = None
        n_key = "labeled" if check == "label_loss" else "requests"
        n = f"{human(cand.get(n_key))} / {human(stab.get(n_key))}" if observed else "–"
        if limit is None:
            verdict: Any = badge("off")
        elif breach is not None:
            verdict = badge("fail")
        else:
            verdict = badge(verdicts.get(check, "no_data") if observed else None)
        rows.append([check, c_val, b_val, Raw(f"{esc(how)} {esc(human(limit))}") if limit is not None else "off",
                     n, verdict, breach.get("message") if breach else verdicts.get(f"{check}:message", "")])
    guard = table(["guardrail", "candidate", "baseline", "limit", "n (candidate / baseline)", "status", "detail"],
                  rows)
    guard = (f"<p class='muted'>As judged at {when(judged_at)}; the minimum sample is "
             f"{human(g.get('min_samples'))} requests per side.</p>" if judged_at else
             "<p class='empty'>Not judged yet: no data.</p>") + guard
    timeline = table(["at", "action", "from", "to", "actor", "detail"],
                     [[when(e["at"]), badge(e["action"]), e.get("from"), e.get("to"), e.get("actor"),
                       _event_detail(e.get("detail") or {})] for e in reversed(events)], empty="no events")
    actions = ""
    if r["status"] == ACTIVE:
        if ctx.can_act:
            actions = "".join(
                f'<form method="post" action="{esc(ctx.base)}/rollouts/{esc(_q(name))}/{verb}" class="action" '
                f'data-confirm="{esc(question)}"><input type="hidden" name="csrf" value="{esc(ctx.csrf)}">'
                f'<label>Reason <input name="reason" size="30" placeholder="{esc(default)}"></label> '
                f'<button type="submit" class="{cls}">{esc(label)}</button></form>'
                for verb, label, cls, question, default in (
                    ("promote", "Promote to the next stage", "primary",
                     f"Promote {name} v{r['candidate']} past stage {r['stage']}?", "promoted by hand"),
                    ("rollback", "Roll back to the baseline", "danger",
                     f"Roll {name} back to {r['baseline']} and end the rollout?", "rolled back by hand")))
        else:
            actions = "<p class='muted'>Promoting or rolling back needs an admin token.</p>"
    earlier = table(["rollout", "candidate", "status", "stage", "started", "ended because"],
                    [[link(ctx.base, f"rollouts/{_q(name)}", f"#{h['id']}", id=h["id"]), f"v{h['candidate']}",
                      badge(h["status"]), h["stage"], when(h["created_at"]), h.get("reason") or "–"]
                     for h in history], empty="no rollout yet")
    heading = f"Rollout #{r['id']}: v{r['candidate']}"
    body = (f'<div id="live" aria-live="polite">{_section(heading, facts)}'
            f'{actions}{_section("Guardrails against their limits", guard)}{_section("Events", timeline)}</div>'
            f'{_section("Every rollout of this model", earlier)}')
    return View(f"Rollout of {name}", body, "rollouts", poll=3 if r["status"] == ACTIVE else None)


def _last_observation(events: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any],
                                                                       dict[str, Any], float | None]:
    for e in reversed(events):
        detail = e.get("detail") or {}
        if "observed" in detail:
            breaches = {b["check"]: b for b in detail.get("breaches") or []}
            verdicts: dict[str, Any] = {}
            for v in detail.get("checks") or []:
                verdicts[v["check"]] = v["status"]
                verdicts[f"{v['check']}:message"] = v.get("message", "")
            for v in detail.get("no_data") or []:
                verdicts[v["check"]] = "no_data"
                verdicts[f"{v['check']}:message"] = v.get("message", "")
            for b in breaches:
                verdicts.setdefault(b, "fail")
            for check, *_ in _CHECKS:
                if check not in verdicts and e["action"] in ("advance", "complete", "hold"):
                    verdicts[check] = "pass"
            return dict(detail["observed"]), breaches, verdicts, e["at"]
    return None, {}, {}, None


def _event_detail(detail: Mapping[str, Any]) -> str:
    if detail.get("breaches"):
        return "; ".join(f"{b.get('check')} breached: {b.get('message')}" for b in detail["breaches"])
    if detail.get("no_data"):
        return "; ".join(str(v.get("message")) for v in detail["no_data"])
    keep = {k: v for k, v in detail.items() if k not in ("observed", "checks")}
    return _short(keep) if keep else ""


# ---- experiments ---------------------------------------------------------------------------------


def experiments(ctx: Context) -> View:
    """Every experiment with its state."""
    listed = control.list_experiments(ctx.project)["experiments"]
    rows = [[link(ctx.base, f"experiments/{_q(e['name'])}", e["name"]), e.get("model") or "–",
             badge(e.get("status")), e.get("primary_metric") or e.get("metric"),
             ", ".join(str(v.get("name")) for v in e.get("variants") or [])] for e in listed]
    body = _section("Experiments", table(["name", "model", "status", "metric", "variants"], rows,
                                         empty="no experiment yet"))
    return View("Experiments", body, "experiments")


def experiment(ctx: Context, name: str, view: str = "cumulative", window: str | None = None,
               test: str | None = None) -> View:
    """Each variant's metric with its confidence interval, the SRM check, the test and the decision, now
    and over time (``view``: ``cumulative`` from the start, or per ``window``; by default 20 even looks;
    ``test`` as ``modelmill experiment analyze --test``, by default the metric's)."""
    from modelmill.experiments import Experiments

    try:  # read once: the current analysis and every look slice the same log
        log = Experiments(ctx.project).log(name)
    except InputError:
        log = None  # no log to read (no served model): each reader says so in its own words
    body = experiment_body(control.experiment_results(ctx.project, name, log=log))
    return View(f"Experiment {name}", body + experiment_over_time(ctx, name, view, window, test, log=log),
                "experiments")


def experiment_over_time(ctx: Context, name: str, view: str = "cumulative", window: str | None = None,
                         test: str | None = None,
                         log: tuple[Experiment, pd.DataFrame] | None = None) -> str:
    """The analysis at each look (:mod:`modelmill.console.timeline`): per variant its metric with a 95%
    interval, per treatment its lift with the test's interval (for the sequential test the anytime-valid
    confidence sequence), its p-value against alpha (the sequential test's stopping boundary), the SRM
    p-value against its threshold, and the decision with its reason at each look."""
    from scipy import stats as st

    from modelmill.console import timeline
    from modelmill.experiments.analysis import SRM_THRESHOLD, TESTS
    from modelmill.monitoring.performance import parse_duration

    window_s = parse_duration(window) if window else None
    if window_s is not None and window_s < 1:
        raise InputError("window", "must be at least 1s", window)
    form = (f'<form method="get" action="{esc(ctx.base)}/experiments/{esc(_q(name))}" class="search">'
            f'<label for="view">Looks</label><select id="view" name="view">'
            + "".join(f'<option{" selected" if v == view else ""}>{v}</option>' for v in timeline.VIEWS)
            + f'</select><label for="window">Window</label><input id="window" name="window" size="6" '
              f'value="{esc(window or "")}" placeholder="auto"><label for="test">Test</label>'
              f'<select id="test" name="test"><option value="">by metric</option>'
            + "".join(f'<option{" selected" if t == test else ""}>{t}</option>' for t in TESTS)
            + '</select><button type="submit">Show</button></form>')
    title = "Over time (" + ("cumulative: each look is everything from the start to its time" if view == "cumulative"
                             else "per window: each look is only the requests answered in its window") + ")"
    try:
        exp, looks = timeline.looks(ctx.project, name, view=view, window_s=window_s, test=test, log=log)
    except InputError as exc:
        if exc.field in ("view", "window", "test"):
            raise
        return _section(title, form + f"<p class='empty'>No data: {esc(exc.message)}</p>", id="over-time")
    if not looks:
        return _section(title, form + "<p class='empty'>No data: nothing logged for this experiment yet.</p>",
                        id="over-time")
    means: dict[str, list[Point]] = {}
    lifts: dict[str, list[Point]] = {}
    pvals: dict[str, list[Point]] = {}
    srm: list[Point] = []
    rows: list[list[Any]] = []
    test = test or ""
    z = float(st.norm.isf(exp.alpha / 2))
    for look in looks:
        a = look.analysis
        if a is None:
            for series in (means, lifts, pvals):
                for key in series:
                    series[key].append(Point(look.end, None))
            srm.append(Point(look.end, None))
            rows.append([when(look.end), "–", "–", "–", "–", "–", badge(None), look.no_data])
            continue
        n_total = 0
        for i, (c, d) in enumerate(a.comparisons):
            test = c.test
            for sample in ((c.control,) if i == 0 else ()) + (c.treatment,):
                half = z * math.sqrt(max(sample.sem2, 0.0)) if sample.n > 0 else math.nan
                ok = math.isfinite(half)
                means.setdefault(sample.name, []).append(Point(look.end, sample.mean, sample.n,
                                                               sample.mean - half if ok else None,
                                                               sample.mean + half if ok else None))
                n_total += sample.n
            lo, hi = c.ci_abs
            finite = math.isfinite(lo) and math.isfinite(hi)
            key = f"{c.treatment.name} − {c.control.name}"
            lifts.setdefault(key, []).append(Point(look.end, c.lift_abs, min(c.control.n, c.treatment.n),
                                                   lo if finite else None, hi if finite else None))
            p = a.p_adjusted[i] if a.p_adjusted else c.p_value
            pvals.setdefault(c.treatment.name, []).append(Point(look.end, p, min(c.control.n, c.treatment.n)))
            rows.append([when(look.end), c.treatment.name, f"{human(c.control.n)} / {human(c.treatment.n)}",
                         a.srm_p_value, Raw(f"{esc(human(c.lift_abs))} {esc(interval(lo, hi))}"), p,
                         badge(d.decision), d.reason])
        srm.append(Point(look.end, a.srm_p_value, n_total))
    sequential = test == "sequential"
    metric = exp.primary_metric
    charts = [
        line_chart(f"{metric} per variant (band: 95% CI of the mean)", means, y_label=metric, auto_gaps=False),
        line_chart(f"Lift over the control ({'band: anytime-valid confidence sequence' if sequential else 'band: the test’s 95% CI'})",
                   lifts, y_label=f"{metric} difference", threshold=0.0, threshold_label="no difference",
                   auto_gaps=False),
        line_chart("p-value" + (" (always valid)" if sequential else ""), pvals, y_label="p-value",
                   threshold=exp.alpha, auto_gaps=False,
                   threshold_label=("sequential boundary (mSPRT): stop once p ≤ alpha" if sequential else
                                    "alpha (read at the planned sample, not before)")),
        line_chart("Sample ratio (SRM) p-value", {"SRM": srm}, y_label="p-value", threshold=SRM_THRESHOLD,
                   threshold_label="mismatch below", auto_gaps=False),
    ]
    decisions = table(["look at", "treatment", "n (control / treatment)", "SRM p", "lift [CI]", "p-value",
                       "decision", "reason"], list(reversed(rows)), empty="no look")
    note = (f"<p class='muted'>{len(looks)} looks of the {esc(test)} test, alpha {human(exp.alpha)}, from "
            f"{when(looks[0].start)} to {when(looks[-1].end)}; each is the experiment's own analysis "
            "(modelmill experiment analyze) of the requests in it. A look with no data is a gap.</p>")
    return _section(title, form + note + _grid(charts) + "<h3>Decision at each look (newest first)</h3>" + decisions,
                    id="over-time")


def experiment_body(res: Mapping[str, Any]) -> str:
    """The experiment page of an ``experiment_results`` answer (its definition, ``analysis`` and decisions)."""
    exp, analysis = res["experiment"], res["analysis"]
    exposures = exp.get("exposures") or {}
    srm = exp.get("srm_p_value")
    if not sum(int(v or 0) for v in exposures.values()):
        srm = None  # nobody exposed: the sample-ratio check has no data, it does not pass
    facts = table(["", ""], [["model", exp.get("model") or "–"], ["status", badge(exp.get("status"))],
                             ["metric", exp.get("primary_metric") or exp.get("metric")],
                             ["exposures", ", ".join(f"{k} {human(v)}" for k, v in exposures.items()) or "–"],
                             ["sample ratio (SRM) p-value",
                              Raw(f"{esc(human(srm))} {badge('fail' if srm is not None and srm < 0.001 else 'pass' if srm is not None else None)}")],
                             ["minimum sample reached", exp.get("min_sample_reached")]])
    body = _section("Experiment", facts)
    if analysis is None:
        return body + _section("Analysis", f"<p class='empty'>No data: {esc(res.get('no_data'))}</p>")
    comparisons = analysis.get("comparisons") or [analysis]
    rows = []
    for c in comparisons:
        lo, hi = (c.get("ci_abs") or [None, None])[:2]
        for side in ("control", "treatment"):
            v = c[side]
            rows.append([f"{v['name']} ({side})", c["metric"], v.get("mean"), v.get("n"),
                         interval(lo, hi) if side == "treatment" else "–",
                         c.get("p_value") if side == "treatment" else None,
                         badge(c["decision"]) if side == "treatment" else "", c["reason"] if side == "treatment" else ""])
    variants = table(["variant", "metric", "mean", "n", "lift vs control, 95% CI", "p-value", "decision", "reason"],
                     rows)
    body += _section(f"Variants ({esc(comparisons[0].get('test'))} test"
                     f"{', sequential (mSPRT): the interval is anytime-valid' if comparisons[0].get('test') == 'sequential' else ''})",
                     variants)
    decisions = table(["treatment", "decision", "reason"], [[d["treatment"], badge(d["decision"]), d["reason"]]
                                                            for d in res["decisions"]])
    return body + _section("Decision", decisions)


# ---- monitoring ----------------------------------------------------------------------------------


def monitoring(ctx: Context, model_name: str | None, window: str = "1h", clock: str | None = None) -> View:
    """Per model and version: drift over time per feature (gaps as gaps), delayed-label metrics with n and
    intervals, latency percentiles, the prediction distribution and the alert history.

    ``clock`` (default: ``[monitoring] clock``) is the time the latency windows are over: ``wall`` (when
    requests were answered) or ``event`` (the event time of their features, for a replay such as the demo).
    """
    from modelmill.monitoring import MonitoringConfig
    from modelmill.monitoring.performance import PerformanceMonitor, parse_duration
    from modelmill.store.tables.monitoring import monitoring_windows as t

    project = ctx.project
    status = control.monitoring_status(project, model=model_name)
    q = sa.select(t.c.at, t.c.model, t.c.version, t.c.n_rows, t.c.drift_share, t.c.drift, t.c.window_start,
                  t.c.window_end).order_by(t.c.at)
    if model_name:
        q = q.where(t.c.model == model_name)
    with project.db.engine.connect() as conn:
        history = [dict(r._mapping) for r in conn.execute(q)]
    latest = table(["model", "version", "judged", "window", "rows", "drift", "drifted columns"],
                   [[w["model"], f"v{w['version']}", when(w["at"]),
                     f"{when(w['window_start'])} – {when(w['window_end'])}", w["n_rows"], badge(w["status"]),
                     ", ".join(w["drifted"]) or "–"] for w in status["windows"]], empty="the monitor has not run: no data")
    body = _section("Latest window per version", latest)
    body += _section("Drift over time", _grid(drift_charts(history)) if history else "<p class='empty'>no data</p>")
    feature_charts = _feature_drift(history)
    body += _section("Drift per feature (a gap is a window with no data)", _grid(feature_charts))
    perf = table(["model", "version", "metric", "value", "n", "status", "reason"],
                 [[p["model"], f"v{p['version']}", k, m.get("value"), m.get("n"), badge(m.get("status")),
                   m.get("reason") or ""] for p in status["performance"] for k, m in (p.get("metrics") or {}).items()],
                 empty="no delayed labels in the label window: no data")
    if clock is None:
        clock = MonitoringConfig.from_section(project.settings.section("monitoring")).clock
    elif clock not in ("wall", "event"):
        raise InputError("clock", "must be wall or event", clock)
    pm = PerformanceMonitor(project, clock=clock)
    metric_rows: list[dict[str, Any]] = []
    latency_rows: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    if pm.feedback.has_predictions():
        latency_rows = pm.latency(window=window, model=model_name)
        if pm.feedback.has_labels():
            metric_rows = _with_empty_windows(pm.rolling(window=window, model=model_name), parse_duration(window))
        outputs = _prediction_distribution(pm, model_name)
    body += _section("Delayed-label metrics (last label window)", perf)
    on = "when answered (wall clock)" if clock == "wall" else "the event time the features were judged at (event clock)"
    body += _section(f"Delayed-label metrics over time ({window} windows of {on}; band: 95% CI, tooltip: n)",
                     _grid(metric_charts(metric_rows) + _labelled_counts(metric_rows)))
    body += _section(f"Latency percentiles ({window} windows, {clock} clock; one chart per version and variant)",
                     _grid(latency_charts(latency_rows)))
    body += _section("Prediction distribution", _grid([bar_chart(f"Outputs of {k}", v["labels"], v["series"],
                                                                 y_label="share of predictions", x_label="output",
                                                                 note=f"n = {human(v['n'])}")
                                                       for k, v in outputs.items()]))
    alerts = table(["rule", "state", "labels", "value", "pending since", "fired", "resolved"],
                   [[a["rule"], badge(a["state"]), ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())),
                     a.get("value"), when(a.get("pending_since")), when(a.get("started_at")),
                     when(a.get("resolved_at"))] for a in status["alerts"]], empty="no alert has been evaluated")
    body += _section("Alert history", alerts)
    models = sorted({w["model"] for w in status["windows"]} | ({model_name} if model_name else set()))
    picker = (f'<form method="get" action="{esc(ctx.base)}/monitoring" class="search"><label for="model">Model</label>'
              f'<input id="model" name="model" value="{esc(model_name or "")}" list="models">'
              f'<datalist id="models">{"".join(f"<option value={chr(34)}{esc(m)}{chr(34)}>" for m in models)}</datalist>'
              f'<label for="window">Window</label><input id="window" name="window" size="6" value="{esc(window)}">'
              f'<label for="clock">Clock</label><select id="clock" name="clock">'
              + "".join(f'<option{" selected" if c == clock else ""}>{c}</option>' for c in ("wall", "event"))
              + '</select><button type="submit">Show</button></form>')
    return View("Monitoring" + (f" of {model_name}" if model_name else ""), picker + body, "monitoring")


def _with_empty_windows(rows: Sequence[Mapping[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """``rows`` of :meth:`~modelmill.monitoring.performance.PerformanceMonitor.rolling` with, per series, a
    row of no data (every metric None, n 0) for each window between its first and last with no labelled
    prediction, so that the charts draw each missing window as a gap whatever the steps around it."""
    from modelmill.monitoring.report import METRICS

    out = [dict(r) for r in rows]
    seen: dict[tuple[Any, ...], set[float]] = {}
    for r in rows:
        if r.get("bucket") is not None:
            seen.setdefault((r["model"], r["version"], r.get("variant")), set()).add(parse_epoch(r["bucket"]))
    for (m, v, variant), buckets in seen.items():
        lo, hi = min(buckets), max(buckets)
        for x in _range(lo, hi, seconds):
            if x not in buckets:
                out.append({"model": m, "version": v, "variant": variant, "n": 0,
                            "bucket": dt.datetime.fromtimestamp(x, dt.UTC), **dict.fromkeys(METRICS)})
    return sorted(out, key=lambda r: (str(r["model"]), str(r["version"]), str(r.get("variant")),
                                      parse_epoch(r["bucket"]) if r.get("bucket") is not None else 0.0))


def _labelled_counts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sample size behind each point of the delayed-label charts: labelled predictions per window."""
    series: dict[str, list[Point]] = {}
    for m in rows:
        if m.get("bucket") is not None and m.get("n") is not None:
            n = int(m["n"])
            series.setdefault(f"{m['model']}@{m['version']} {m.get('variant', 'all')}", []).append(
                Point(parse_epoch(m["bucket"]), float(n) if n else None, n))
    return [line_chart("Labelled predictions per window (n)", series, y_label="labelled predictions")] if series else []


def _feature_drift(history: Sequence[Mapping[str, Any]], top: int = 8) -> list[str]:
    """One chart per feature: its drift statistic per version over the windows, None where a window has none."""
    per_feature: dict[str, dict[str, list[Point]]] = {}
    tests: dict[str, str] = {}
    for w in history:
        key = f"{w['model']}@v{w['version']}"
        columns = (w.get("drift") or {})
        columns = columns.get("columns", columns) if isinstance(columns, Mapping) else {}
        at = float(w["at"])
        seen = set()
        for col, d in columns.items():
            if not isinstance(d, Mapping) or d.get("statistic") is None:
                continue
            seen.add(col)
            tests.setdefault(col, str(d.get("test")))
            per_feature.setdefault(col, {}).setdefault(key, []).append(Point(at, float(d["statistic"]), w.get("n_rows")))
        for col, series in per_feature.items():
            if col not in seen and key in series:  # this window judged nothing for the feature: a gap
                series[key].append(Point(at, None))
    ranked = sorted(per_feature.items(), key=lambda kv: -max((p.y or 0.0) for s in kv[1].values() for p in s))
    return [line_chart(f"{col} ({tests.get(col)})", series, y_label="drift statistic") for col, series in ranked[:top]]


def _prediction_distribution(pm: Any, model_name: str | None, bins: int = 20) -> dict[str, Any]:
    """The share of answered predictions per output bin, per model (bins shared by its versions)."""
    table_name = pm.feedback.predictions
    where = "output IS NOT NULL AND isfinite(output)" + (" AND model = ?" if model_name else "")
    params = [model_name] if model_name else []
    with pm.project.offline.connect([table_name]) as con:
        bounds = con.execute(f"SELECT model, min(output), max(output), count(*) FROM {table_name} WHERE {where} "
                             "GROUP BY model ORDER BY model", params).fetchall()
        out: dict[str, Any] = {}
        for m, lo, hi, n in bounds:
            lo, hi = float(lo), float(hi)
            width = (hi - lo) / bins if hi > lo else 1.0
            rows = con.execute(
                f"SELECT version, least(CAST(floor((output - ?) / ?) AS BIGINT), {bins - 1}) AS b, count(*) "
                f"FROM {table_name} WHERE {where} AND model = ? GROUP BY ALL ORDER BY 1, 2",
                [lo, width, *params, m]).fetchall()
            series: dict[str, list[float]] = {}
            totals: dict[str, int] = {}
            for v, _, c in rows:
                totals[f"v{v}"] = totals.get(f"v{v}", 0) + int(c)
            for v, k, c in rows:
                series.setdefault(f"v{v}", [0.0] * bins)[int(k)] = int(c) / totals[f"v{v}"]
            out[str(m)] = {"labels": [human(lo + i * width) for i in range(bins)], "series": series, "n": int(n)}
    return out


# ---- ingestion -----------------------------------------------------------------------------------


def ingestion(ctx: Context, bucket_s: int = 3600) -> View:
    """Throughput and lag per stream, and the dead letters by reason with a payload view."""
    from modelmill.ingest.deadletters import DeadLetters
    from modelmill.store.tables.ingest import ingest_batches as b

    project = ctx.project
    with project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(b.c.stream, b.c.rows, b.c.created_at).order_by(b.c.created_at)).all()
    series: dict[str, dict[float, float]] = {}
    for r in rows:
        bucket = math.floor(float(r.created_at) / bucket_s) * bucket_s
        per = series.setdefault(r.stream, {})
        per[bucket] = per.get(bucket, 0.0) + float(r.rows)
    charts = []
    for stream, per in series.items():
        if per:
            lo, hi = min(per), max(per)
            points = [Point(x, per.get(x, None)) for x in _range(lo, hi, bucket_s)]
            charts.append(line_chart(f"Rows ingested per hour: {stream}", {stream: points}, y_label="rows per hour",
                                     gap_after=1.5 * bucket_s))
    body = _section("Streams", _lag_table(project, ctx.base)) + _section("Throughput", _grid(charts))
    letters = DeadLetters(project.db)
    counts = letters.counts()
    body += _section("Dead letters by reason", table(["reason", "pending"], sorted(counts.items()),
                                                     empty="no dead letter pending"))
    listed = letters.list(limit=100)
    body += _section("Newest pending dead letters", table(
        ["id", "stream", "schema", "reason", "field", "detail", "when"],
        [[link(ctx.base, f"ingestion/dead-letters/{d.id}", d.id), d.stream, d.schema, d.reason, d.field or "–",
          d.detail[:120], when(d.created_at)] for d in listed[-100:]], empty="no dead letter pending"))
    return View("Ingestion", body, "ingestion")


def _range(lo: float, hi: float, step: float) -> list[float]:
    n = round((hi - lo) / step)
    return [lo + i * step for i in range(min(n, 10_000) + 1)]


def dead_letter(ctx: Context, letter_id: int) -> View:
    """One dead letter: why it was rejected, and its payload as it arrived (pretty-printed when JSON)."""
    from modelmill.ingest.deadletters import DeadLetters

    letters = DeadLetters(ctx.project.db)
    found = [x for replayed in (False, True) for x in letters.list(replayed=replayed, after_id=letter_id - 1, limit=1)
             if x.id == letter_id]
    if not found:
        raise InputError("id", "is not a dead letter's id", letter_id)
    d = found[0].as_dict()
    payload = d["payload"]
    try:
        payload = json.dumps(json.loads(payload), indent=2, sort_keys=True)
    except (ValueError, TypeError):
        pass
    facts = table(["", ""], [["stream", d["stream"]], ["schema", d["schema"]], ["reason", d["reason"]],
                             ["field", d["field"] or "–"], ["detail", d["detail"]], ["received", when(d["created_at"])],
                             ["replayed", when(d["replayed_at"])]])
    body = _section("Rejected event", facts) + _section("Payload", f"<pre class='payload'>{esc(payload)}</pre>")
    return View(f"Dead letter {letter_id}", body, "ingestion")


def parse_epoch(value: Any) -> float:
    """Epoch seconds of a datetime or a number."""
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return float(value)
