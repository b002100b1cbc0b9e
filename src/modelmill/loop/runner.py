"""``modelmill loop``: every configured model's monitor, scheduler, decisions and rollouts, under one lease.

:meth:`Loop.round` does one round when this process holds the lease (see :mod:`modelmill.loop` for the
phases) and nothing but try to take it otherwise. Before each phase of each model it renews the lease; a
renewal that fails (another loop took over) ends the round there, so a leader that lost its lease stops
acting. All state is in the database (alerts, triggers, decisions, rollouts), so a loop started again, here
or on another host, goes on where the last one stopped.

:meth:`Loop.run` repeats rounds every ``interval`` seconds; a heartbeat thread renews the lease meanwhile,
so a long retraining run in the scheduler does not lose it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from modelmill.errors import ConfigError, InputError, ModelmillError
from modelmill.loop.config import LoopConfig, ModelLoop
from modelmill.loop.decisions import Decider
from modelmill.loop.lease import Lease
from modelmill.loop.measure import LoopMeasure

__all__ = ["Loop", "pipeline_params"]

log = logging.getLogger("modelmill.loop")

AUTO_PARAMS = ("model", "feature_service")


def pipeline_params(model: ModelLoop, needed: list[str]) -> dict[str, Any]:
    """The params the model's pipeline runs with: the configured ones, plus ``model`` and
    ``feature_service`` when the pipeline takes them as inputs and the params do not set them.

        >>> from modelmill.loop.config import parse_models
        >>> m = parse_models({"clicks": {"pipeline": {"function": "p:q", "params": {"days": 3}},
        ...                              "gate": {"min": {"auc": 0.6}}}}).model("clicks")
        >>> pipeline_params(m, ["days", "model"])
        {'days': 3, 'model': 'clicks'}
    """
    params = dict(model.pipeline.params)
    auto = {"model": model.name, "feature_service": model.feature_service}
    for name in AUTO_PARAMS:
        if name in needed and name not in params and auto[name] is not None:
            params[name] = auto[name]
    missing = [p for p in needed if p not in params]
    if missing:
        raise ConfigError(f"models.{model.name}.pipeline.params", sorted(params),
                          f"values for every input of {model.pipeline.function} that no step produces; "
                          f"missing {', '.join(missing)}")
    return params


class Loop:
    """The loop of ``config``'s models in ``project``. The constructor does no I/O; :meth:`start` resolves
    the pipelines (the first round calls it), and the first round it leads sets the cron schedules."""

    def __init__(self, project: Any, config: LoopConfig, *, lease: Lease | None = None, interval: float = 30.0,
                 clock: Callable[[], float] = time.time, actor: str = "loop") -> None:
        """``clock`` times the rounds' decisions (see :meth:`round`); ``lease`` (default: a :class:`Lease`
        named ``loop`` with a fresh holder id, on the real clock) decides who leads."""
        if not interval > 0:
            raise InputError("--interval", "must be a positive number of seconds", interval)
        self.project = project
        self.config = config
        self.lease = lease or Lease(project.db)
        self.interval = float(interval)
        self.clock = clock
        self.actor = actor
        self.rounds = 0
        self._started = False
        self._scheduled = False
        self._resumed: set[str] = set()
        self._monitors: dict[str, Any] = {}
        self._deciders: dict[str, Decider] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._scheduler: Any = None
        self._controller: Any = None
        self._deliverer: Any = None
        self._stop = threading.Event()
        self._now: float | None = None

    def __repr__(self) -> str:
        return f"Loop(models={self.config.names}, holder={self.lease.holder!r}, interval={self.interval:g})"

    # ---- set-up ----------------------------------------------------------------------------------

    def start(self) -> Loop:
        """Resolve every model's pipeline (a wrong name, missing params or a missing gate output is a
        :class:`ConfigError` naming the key), build the monitors, and set the cron schedules."""
        if self._started:
            return self
        from modelmill.monitoring.monitor import Monitor, MonitoringConfig
        from modelmill.rollout import RolloutController, ServingGuardrails
        from modelmill.training import Scheduler, get_pipeline

        base = MonitoringConfig.from_section(self.project.settings.section("monitoring"))
        self._controller = RolloutController(
            self.project, actor=self.actor, clock=self._time,
            source=ServingGuardrails(self.project, metrics_url=base.metrics_url))
        self._scheduler = Scheduler(self.project, worker=f"loop:{self.lease.holder}")
        for m in self.config.models:
            key = f"models.{m.name}.pipeline.function"
            try:
                pipeline = get_pipeline(m.pipeline.function, self.project)
            except ModelmillError as exc:
                raise ConfigError(key, m.pipeline.function, f"an importable pipeline ({exc.message})") from None
            outputs = {o for s in pipeline.steps for o in s.outputs}
            if m.gate.data not in outputs:
                raise ConfigError(f"models.{m.name}.gate.data", m.gate.data,
                                  f"an output of {m.pipeline.function} (it has {', '.join(sorted(outputs))})")
            params = pipeline_params(m, pipeline.params_needed)
            self._params[m.name] = params
            rules = m.monitoring_rules(params)
            drift = [r for r in m.rules if r.kind == "drift"]
            config = dataclasses.replace(base, models=(m.name,), rules=tuple(rules),
                                         window=drift[0].window if drift else base.window)
            counts = {m.rule_name(r.kind): r.min_count for r in m.rules}
            self._monitors[m.name] = Monitor(self.project, config, measure=LoopMeasure(
                self.project, min_counts=counts, metrics_url=base.metrics_url, clock=base.clock, watch=m.gate.against))
            self._deciders[m.name] = Decider(self.project, m, controller=self._controller, actor=self.actor,
                                             still_leader=self._still_leader, clock=self._time)
        self._started = True
        return self

    def _apply_schedules(self, now: float) -> None:
        """Make the cron schedules of the models' pipelines what the config says (the leader's first round):
        a changed one replaced, a removed one dropped, an unchanged one kept with its last tick."""
        current = {s["pipeline"]: s for s in self._scheduler.schedules()}
        for m in self.config.models:
            have = current.get(m.pipeline.function)
            params = self._params[m.name]
            if m.pipeline.cron is None:
                if have is not None:
                    self._scheduler.unschedule(m.pipeline.function)
            elif have is None or have["cron"] != m.pipeline.cron or dict(have["params"]) != params:
                self._scheduler.schedule(m.pipeline.function, m.pipeline.cron, params=params, now=now)
        self._scheduled = True

    # ---- rounds ----------------------------------------------------------------------------------

    def _still_leader(self) -> bool:
        return self.lease.renew()

    def _time(self) -> float:
        """The round's time (``round(now=...)``) for everything the round decides; the clock between rounds."""
        return self.clock() if self._now is None else self._now

    def round(self, now: float | None = None) -> dict[str, Any]:
        """One round if this process is (or becomes) the leader; returns what it did.

        ``{"leader": bool, "holder", "epoch", "at", "scheduler": [triggers run], "models": {name:
        {"monitor", "decisions", "rollout"}}, "webhooks": {"delivered", "pending", "failed"} or None}``;
        ``"lost": true`` when the lease went to another loop mid-round.

        ``now`` (default: the loop's ``clock``) is the time of everything the round judges: the monitor's
        windows, the cron ticks, the rollout stages' times, the decisions' stamps. A demo that drives time
        passes it; the lease always runs on its own clock, the real one by default.
        """
        at = self.clock() if now is None else now
        self._now = at
        try:
            return self._round(at)
        finally:
            self._now = None

    def _round(self, at: float) -> dict[str, Any]:
        out: dict[str, Any] = {"at": at, "holder": self.lease.holder, "leader": False, "models": {}}
        if not self.lease.acquire():
            info = self.lease.info() or {}
            out["following"] = info.get("holder")
            return out
        self.start()
        if not self._scheduled:
            self._apply_schedules(at)
        out |= {"leader": True, "epoch": self.lease.epoch}
        self.rounds += 1
        for m in self.config.models:
            out["models"][m.name] = {}
        phases: list[tuple[str, Callable[[ModelLoop], Any]]] = [
            ("monitor", lambda m: self._monitor(m, at)),
            ("scheduler", lambda m: self._schedule_round(at)),
            ("decisions", lambda m: self._deciders[m.name].round()),
            ("rollout", self._rollout),
            ("webhooks", lambda m: self._webhooks()),
        ]
        for phase, act in phases:
            # One scheduler runs the triggers of every model (and of any other pipeline): once a round.
            # So does one webhook deliverer, for the events of every model.
            for m in self.config.models[:1] if phase in ("scheduler", "webhooks") else self.config.models:
                if not self._still_leader():
                    out["lost"] = True
                    out["leader"] = False
                    log.warning("loop %s lost its lease during the %s phase; it stops acting",
                                self.lease.holder, phase)
                    return out
                try:
                    result = act(m)
                except ModelmillError as exc:  # one model's failure must not stop the others
                    log.error("loop: %s of %s failed: %s", phase, m.name, exc.message)
                    result = {"error": exc.message}
                except Exception as exc:
                    log.exception("loop: %s of %s failed", phase, m.name)
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                if phase in ("scheduler", "webhooks"):
                    out[phase] = result
                else:
                    out["models"][m.name][phase] = result
        if not self.lease.record_round(_summary(out)):
            out["lost"] = True
            out["leader"] = False
        return out

    def _monitor(self, m: ModelLoop, now: float) -> dict[str, Any]:
        monitor = self._monitors[m.name]
        # Under [monitoring] clock = "event" (a replay) the windows end at the online store's watermark,
        # whatever the round's time; rollouts and decisions stay on the round's (wall) clock.
        result = monitor.run_once(None if monitor.config.clock == "event" else now)
        return {"status": result["status"], "reasons": result["reasons"][:5],
                "windows": result["windows"], "alerts_changed": result["alerts_changed"],
                "alerts_active": [a for a in result["alerts_active"]
                                  if a["rule"].startswith(f"{m.name}.")]}

    def _schedule_round(self, now: float) -> list[dict[str, Any]]:
        ran = self._scheduler.tick(now)
        return [{"trigger_id": t.id, "pipeline": t.pipeline, "status": t.status, "pipeline_run_id": t.pipeline_run_id,
                 "error": t.error} for t in ran]

    def _webhooks(self) -> dict[str, Any] | None:
        """One bounded pass of the webhook outbox (``modelmill webhooks deliver`` runs the same); None when no
        ``[[webhooks]]`` are configured."""
        from modelmill.events import Deliverer, load_webhooks

        if not load_webhooks(self.project.settings):
            return None
        if self._deliverer is None:
            self._deliverer = Deliverer(self.project, holder=f"loop:{self.lease.holder}")
        attempts = self._deliverer.deliver_once(budget_s=min(10.0, self.interval / 2))
        return {status: sum(1 for a in attempts if a.status == status)
                for status in ("delivered", "pending", "failed")}

    def _rollout(self, m: ModelLoop) -> dict[str, Any] | None:
        ctl = self._controller
        active = [s for s in ctl.active() if s.model == m.name]
        if not active:
            return None
        if m.name not in self._resumed:  # traffic as the stored stage says, whatever happened before a restart
            ctl.apply(active[0])
            self._resumed.add(m.name)
        step = ctl.step(m.name)
        return {"action": step.action, "reason": step.reason, "rollout": step.state.id,
                "candidate": step.state.candidate, "stage": str(step.state.current), "status": step.state.status}

    def run(self, *, once: bool = False, max_seconds: float | None = None,
            on_round: Callable[[dict[str, Any]], None] | None = None,
            sleep: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Rounds every ``interval`` until :meth:`stop`, ``max_seconds``, or one round (``once``); returns
        the last round. A follower tries to take the lease at every interval."""
        if max_seconds is not None and not max_seconds > 0:
            raise InputError("--max-seconds", "must be a positive number of seconds", max_seconds)
        wait = sleep or self._stop.wait
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        beat = threading.Thread(target=self._heartbeat, name="loop-lease", daemon=True)
        beat.start()
        last: dict[str, Any] = {}
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                last = self.round()
                if on_round is not None:
                    on_round(last)
                if once or (deadline is not None and time.monotonic() >= deadline):
                    break
                pause = self.interval - (time.monotonic() - began)
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                wait(max(0.0, pause))
        finally:
            self._stop.set()
            beat.join(timeout=5)
            self.lease.release()
        return last

    def stop(self) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        period = max(0.05, self.lease.ttl / 3)
        while not self._stop.wait(period):
            if self.lease.held:
                try:
                    self.lease.renew()
                except Exception as exc:  # a database hiccup: the next beat or round tries again
                    log.warning("loop lease renewal failed: %s", exc)


def _summary(out: Mapping[str, Any]) -> dict[str, Any]:
    """What ``loop status`` shows of a round: per model, each phase in a line."""
    models: dict[str, Any] = {}
    for name, phases in out.get("models", {}).items():
        mon = phases.get("monitor") or {}
        roll = phases.get("rollout")
        models[name] = {
            "monitor": mon.get("error") or mon.get("status"),
            "alerts_changed": mon.get("alerts_changed", []),
            "decisions": [{"trigger_id": d.get("trigger_id"), "status": d.get("status"), "version": d.get("version")}
                          for d in phases.get("decisions", []) or [] if isinstance(d, Mapping)],
            "rollout": None if roll is None else {k: roll.get(k) for k in ("action", "stage", "status", "error")},
        }
    ran = out.get("scheduler")
    return {"at": out.get("at"), "holder": out.get("holder"), "epoch": out.get("epoch"),
            "triggers_ran": [t["trigger_id"] for t in ran] if isinstance(ran, list) else ran, "models": models}
