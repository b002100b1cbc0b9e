"""The model server's state: deployed versions, live routes, and the one prediction path every route uses.

Everything a request needs is in memory. A background task re-reads the
routes and re-resolves aliases every ``reload_interval_s``; a version that
appears is loaded *before* the routes are swapped, and requests already
running keep the version they started with, so a hot swap drops nothing.

    >>> import asyncio, numpy as np
    >>> from modelmill.serving.models import FunctionModel, StaticSource
    >>> src = StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0] + 1)], aliases={"m@production": 1})
    >>> server = ModelServer(src, config=ServerConfig(models=["m@production"], log_predictions=False))
    >>> async def main():
    ...     await server.start()
    ...     try:
    ...         return await server.predict("m", np.array([[1.0]]))
    ...     finally:
    ...         await server.stop()
    >>> asyncio.run(main()).output.tolist()
    [2.0]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from modelmill.errors import BackendUnavailable, ConfigError, InputError, ModelmillError, NotFoundError
from modelmill.security.auth import MODES
from modelmill.serving import metrics
from modelmill.serving.batching import Batcher
from modelmill.serving.cache import PredictionCache
from modelmill.serving.compiled import fast_predict
from modelmill.serving.limits import Deadlines, Limits
from modelmill.serving.models import ModelHandle, input_names, parse_ref
from modelmill.serving.predlog import PredictionLog
from modelmill.serving.responses import ModelFailed
from modelmill.serving.routing import Route, RouteTable, Variant, bucket
from modelmill.serving.stats import ModelStats
from modelmill.serving.strings import StringCodes

__all__ = ["Choice", "Deployed", "ModelFailed", "ModelServer", "Prediction", "ServerConfig"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server runs; read from ``[serving]`` in modelmill.toml by :meth:`from_section`.

    ``models``: references served without a stored route (``"flights@production"``);
    every model with a stored route is served too. ``compile``: evaluate plain linear
    scikit-learn models with numpy (see :mod:`modelmill.serving.compiled`). ``auth``:
    ``"control"`` (API tokens for the control plane) or ``"required"`` (for predictions
    too); see :mod:`modelmill.security`. ``latency_slo_ms``: the p95 latency objective, exported as the
    gauge ``modelmill_latency_slo_seconds`` for autoscaling and alerts to compare the p95 with.
    """

    models: Sequence[str] = ()
    max_batch_size: int = 64
    max_wait_us: int = 500
    offload: bool = False
    compile: bool = True
    cache: bool = True
    cache_items: int = 50_000
    cache_ttl_s: float = 300.0
    cache_timeout_s: float = 0.05
    log_predictions: bool = True
    log_flush_interval_s: float = 1.0
    reload_interval_s: float = 0.5
    max_shadow_inflight: int = 2000
    lazy: bool = False
    max_models_in_memory: int = 0
    memory_budget: int | str = 0
    latency_slo_ms: float = 100.0
    auth: str = "control"
    limits: Limits = dataclasses.field(default_factory=Limits)

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", [self.models])
        for ref in self.models:
            parse_ref(ref)
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ConfigError("serving.max_batch_size", self.max_batch_size, "a whole number of at least 1")
        if not isinstance(self.max_wait_us, int) or self.max_wait_us < 0:
            raise ConfigError("serving.max_wait_us", self.max_wait_us, "a whole number of microseconds >= 0")
        if not self.reload_interval_s > 0:
            raise ConfigError("serving.reload_interval_s", self.reload_interval_s, "a number of seconds above 0")
        if isinstance(self.latency_slo_ms, bool) or not isinstance(self.latency_slo_ms, int | float) \
                or not self.latency_slo_ms > 0:
            raise ConfigError("serving.latency_slo_ms", self.latency_slo_ms, "a number of milliseconds above 0")
        if not self.cache_timeout_s > 0:
            raise ConfigError("serving.cache_timeout_s", self.cache_timeout_s, "a number of seconds above 0")
        if not isinstance(self.lazy, bool):
            raise ConfigError("serving.lazy", self.lazy, "true (load each model on its first request) or false")
        if not isinstance(self.max_models_in_memory, int) or isinstance(self.max_models_in_memory, bool) \
                or self.max_models_in_memory < 0:
            raise ConfigError("serving.max_models_in_memory", self.max_models_in_memory,
                              "a whole number >= 0 (0: no limit)")
        object.__setattr__(self, "memory_budget", parse_bytes(self.memory_budget, "serving.memory_budget"))
        if self.auth not in MODES:
            raise ConfigError("serving.auth", self.auth, f"one of {', '.join(repr(m) for m in MODES)}: "
                              "'control' guards routes and aliases, 'required' predictions too")

    @classmethod
    def from_section(cls, section: Mapping[str, Any], **overrides: Any) -> ServerConfig:
        data = dict(section)
        limits = Limits.from_section(data)
        keys = {f.name for f in dataclasses.fields(cls)} - {"limits"}
        values = {k: v for k, v in data.items() if k in keys}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(limits=limits, **values)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: Any, key: str) -> int:
    """A size in bytes from a number or a string such as ``"512MB"`` or ``"2 GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("kmgib")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            number = -1.0
        if number >= 0 and unit in _UNITS:
            return int(number * _UNITS[unit])
    raise ConfigError(key, value, "a size in bytes: a whole number, or a string such as '512MB' or '2GiB' "
                      "(0: no limit)")


class Deployed:
    """One loaded model version with its batchers; shared by every route that names it."""

    def __init__(self, handle: ModelHandle, lineage: Mapping[str, Any], config: ServerConfig,
                 executor: concurrent.futures.Executor | None, shadow_executor: concurrent.futures.Executor,
                 stats: ModelStats | None = None) -> None:
        self.handle = handle
        self.name = str(handle.name)
        self.version = int(handle.version)
        self.lineage = dict(lineage or {})
        self.columns: tuple[str, ...] = tuple(input_names(handle))
        self.n_features = len(self.columns)
        self.column_index = {c: i for i, c in enumerate(self.columns)}
        self.dtypes = [str(getattr(f, "dtype", "float64")) for f in handle.signature.inputs]
        self.feature_plan: Any = None  # built by the predict route on first use
        options = getattr(handle, "options", None) or {}
        #: What the model's outputs are (the flavor says): "binary" and "regression" answer one number per
        #: row, "multiclass" a probability per class (``classes`` names them), "multi_output" several values.
        self.task = str(options.get("task", "binary"))
        self.classes: list[str] = [str(c) for c in options.get("classes") or ()]
        strings = [c for c, t in zip(self.columns, self.dtypes, strict=True) if t == "string"]
        #: The codes that carry this version's string columns through the float64 path (None: all numeric).
        self.codes: StringCodes | None = None
        if strings:
            self.codes = StringCodes(self.columns, options.get("categories") or {}, string_columns=strings)
        compiled = fast_predict(handle, self.n_features) if config.compile and self.codes is None else None
        self.compiled = compiled is not None
        predict = compiled or handle.predict
        if self.codes is not None:
            predict = self.codes.wrap(predict)
        self.stats = stats if stats is not None else ModelStats(self.name, self.version)
        timed = _timed(predict, self.stats)
        observe = metrics.BATCH_SIZE.labels(self.name, str(self.version)).observe
        # Each batch answers [n, outputs + 1]: the last column is the batch's model call time (ns), which
        # the statistics charge to every request in it.
        self.batcher = Batcher(timed, max_batch_size=config.max_batch_size, flat=False,
                               max_wait_us=config.max_wait_us, executor=executor, on_batch=observe,
                               queue=(self.name, str(self.version), "predict"))
        self.shadow_batcher = Batcher(timed, max_batch_size=config.max_batch_size, flat=False,
                                      max_wait_us=config.max_wait_us, executor=shadow_executor, on_batch=observe,
                                      queue=(self.name, str(self.version), "shadow"))

    def __repr__(self) -> str:
        return f"Deployed({self.name!r}, {self.version})"


def _timed(predict: Callable[[np.ndarray], np.ndarray], stats: ModelStats) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` whose answer gains a last column: the call's duration in ns (counted in ``stats``)."""
    clock = time.perf_counter_ns

    def run(X: np.ndarray) -> np.ndarray:
        t = clock()
        out = np.asarray(predict(X), dtype=np.float64).reshape(len(X), -1)
        ns = clock() - t
        stats.execution(len(X), ns)
        res = np.empty((len(X), out.shape[1] + 1), dtype=np.float64)
        res[:, :-1] = out
        res[:, -1] = ns
        return res
    return run


def _logged(out: np.ndarray, task: str) -> np.ndarray:
    """The one number per row the prediction log keeps: the output itself, the predicted class's index for
    a multiclass model (probabilities ``[n, C]``), the first value of a multi-output one."""
    if out.ndim == 1:
        return out
    return out.argmax(axis=1).astype(np.float64) if task == "multiclass" else np.ascontiguousarray(out[:, 0])


def _probabilities(out: np.ndarray, task: str) -> np.ndarray | None:
    """What the prediction log keeps beside :func:`_logged`: a multiclass model's probability per class."""
    return out if task == "multiclass" and out.ndim == 2 else None


def _split(res: np.ndarray) -> tuple[np.ndarray, int]:
    """A timed batch answer as the outputs (``[n]`` for one output) and the model call's ns."""
    out = np.ascontiguousarray(res[:, 0] if res.shape[1] == 2 else res[:, :-1])
    return out, int(res[0, -1]) if len(res) else 0


@dataclasses.dataclass(frozen=True)
class LiveRoute:
    """A route with every variant resolved to a deployed version."""

    route: Route
    live: Sequence[tuple[Variant, Deployed]]
    shadows: Sequence[tuple[Variant, Deployed]]

    def pick(self, routing_key: str | None, request_id: str) -> tuple[Variant, Deployed]:
        if len(self.live) == 1:
            return self.live[0]
        chosen = self.route.pick(bucket(routing_key if routing_key is not None else request_id, self.route.salt))
        for pair in self.live:
            if pair[0] is chosen:
                return pair
        raise AssertionError("route and its resolution disagree")  # pragma: no cover

    def versions(self) -> list[Deployed]:
        seen: dict[int, Deployed] = {}
        for _, d in (*self.live, *self.shadows):
            seen.setdefault(d.version, d)
        return [seen[v] for v in sorted(seen)]


@dataclasses.dataclass(eq=False)
class Choice:
    """The variant picked for one request; :meth:`ModelServer.run` notes its timings for the statistics."""

    live: LiveRoute
    variant: str
    deployed: Deployed
    request_id: str
    routing_key: str | None
    #: (compute_input, queue, compute_infer) ns of a prediction the model made; None for a cache hit or failure
    timings: tuple[int, int, int] | None = None
    answered_at: float = 0.0  # perf_counter() when the outputs were known


@dataclasses.dataclass(frozen=True)
class Prediction:
    output: np.ndarray
    model: str
    version: int
    variant: str
    request_id: str
    cached: bool


class ModelServer:
    """Serves the models of ``source`` (the registry) along ``routes``; see the module docstring."""

    def __init__(self, source: Any, *, config: ServerConfig | None = None, routes: RouteTable | None = None,
                 offline: Any = None, cache_store: Any = None, features: Any = None) -> None:
        self.source = source
        self.config = config or ServerConfig()
        self.deadlines = Deadlines(self.config.limits.request_timeout_s)
        self.routes = routes
        self.offline = offline
        self.cache_store = cache_store
        self.features = features
        self.cache: PredictionCache | None = None
        self.predlog: PredictionLog | None = None
        self.started_at = 0.0
        self.last_error: str | None = None
        #: Per model, why the version its route or alias names could not be loaded (while it cannot).
        self.load_errors: dict[str, str] = {}
        self._live: dict[str, LiveRoute] = {}
        self._deployed: dict[tuple[str, int], Deployed] = {}
        #: Inference statistics per (model, version) since the server started (kept across unload and reload).
        self.stats: dict[tuple[str, int], ModelStats] = {}
        #: Models loaded (``load_model``) or unloaded (``unload_model``) through the repository API.
        self._requested: set[str] = set()
        self._unloaded: set[str] = set()
        #: With ``lazy``: the wanted models loaded so far (by a request or a repository load), and when each
        #: was last used (least recently used ones are unloaded over the memory limits).
        self._activated: set[str] = set()
        self._last_used: dict[str, float] = {}
        self._lazy_lock = asyncio.Lock()
        self._lazy_failed: dict[str, tuple[float, str]] = {}
        self._stored: Mapping[str, Route] = {}
        self.evictions = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._shadow_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._sampler_stop = threading.Event()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._reload_failing = False
        #: Called (off the event loop) at every reload, e.g. to re-read API tokens; a failing hook
        #: is logged and leaves what it refreshes as it was.
        self.reload_hooks: list[Callable[[], None]] = []
        self._rid_prefix = os.urandom(4).hex()
        self._rid = 0
        self.shadow_dropped = 0

    def __repr__(self) -> str:
        return f"ModelServer(models={sorted(self._live)})"

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> ModelServer:
        """Load every served model and start the background reload, log and sampling tasks."""
        cfg = self.config
        if cfg.offload:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelmill-predict")
        self._shadow_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelmill-shadow")
        if cfg.cache:
            self.cache = PredictionCache(max_items=cfg.cache_items, shared=self.cache_store, ttl_s=cfg.cache_ttl_s,
                                         timeout_s=cfg.cache_timeout_s)
        if cfg.log_predictions and self.offline is not None:
            self.predlog = PredictionLog(self.offline, flush_interval_s=cfg.log_flush_interval_s).start()
        await self.reload(raise_errors=True)
        metrics.set_latency_slo(cfg.latency_slo_ms)
        self.started_at = time.time()
        self._reloader = asyncio.get_running_loop().create_task(self._reload_loop())
        self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())
        threading.Thread(target=self._sample_loop, name="modelmill-sampler", daemon=True).start()
        return self

    async def stop(self) -> None:
        for task in (self._reloader, self._publisher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._reloader = self._publisher = None
        metrics.REQUESTS.publish()
        self._sampler_stop.set()
        if self._shadow_tasks:
            await asyncio.wait(list(self._shadow_tasks), timeout=5)
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.stop)
        if self.cache is not None:
            self.cache.close()
        for ex in (self._executor, self._shadow_executor):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """Every served model has a loaded version (with ``lazy``: none failed to load)."""
        if self.started_at <= 0:
            return False
        if self.config.lazy:
            return not any(n in self.load_errors and n not in self._live for n in self._wanted_names(None))
        return all(name in self._live for name in self._wanted_names(None))

    def model_readiness(self, name: str, version: int | None = None) -> tuple[bool, str]:
        """Whether ``name`` (a version of it) answers now, and if not, why."""
        if name in self._live:
            if version is None or any(d.version == version for d in self._live[name].versions()):
                return True, ""
            served = ", ".join(str(d.version) for d in self._live[name].versions())
            return False, f"version {version} is not served; versions being served: {served}"
        failed = self._lazy_failed.get(name)
        if failed is not None:
            return False, failed[1]
        if self.config.lazy and name in self._wanted_names(self._stored) and name not in self.load_errors:
            return False, "not loaded yet: it loads on its first request (or POST /v2/repository/models/" \
                          f"{name}/load)"
        return False, self.not_ready_reason(name)

    def wants_lazily(self, name: str) -> bool:
        """``name`` is served but not loaded yet (``lazy``): a request loads it."""
        return self.config.lazy and name not in self._live and name not in self._unloaded \
            and name in self._wanted_names(self._stored)

    async def ensure_loaded(self, name: str) -> None:
        """Load a lazily served model on its first request (concurrent first requests load it once).

        A model that fails to load is not tried again for 5 s: requests meanwhile get the same error.
        """
        failed = self._lazy_failed.get(name)
        if failed is not None and time.monotonic() - failed[0] < 5.0:
            raise ModelFailed(failed[1], model=name)
        async with self._lazy_lock:
            if name in self._live:
                return
            t0 = time.perf_counter()
            try:
                await self.load_model(name)
            except ModelFailed as exc:
                self._lazy_failed[name] = (time.monotonic(), exc.message)
                raise
            self._lazy_failed.pop(name, None)
            log.info("loaded %s on its first request in %.1f ms", name, (time.perf_counter() - t0) * 1000)

    def _memory(self) -> int:
        """The loaded versions' size (their artifacts' bytes: the flavor's estimate of the memory they take)."""
        return sum(int((getattr(d.handle, "options", None) or {}).get("artifact_bytes", 0))
                   for d in self._deployed.values())

    async def _evict(self, keep: str) -> None:
        """Unload least recently used lazily loaded models while over ``max_models_in_memory`` or
        ``memory_budget`` (never ``keep``, the model just loaded)."""
        cfg = self.config
        if not cfg.lazy or not (cfg.max_models_in_memory or cfg.memory_budget):
            return
        while True:
            over_count = bool(cfg.max_models_in_memory) and len(self._live) > cfg.max_models_in_memory
            over_bytes = bool(cfg.memory_budget) and self._memory() > int(cfg.memory_budget)
            victims = [n for n in self._live if n in self._activated and n != keep]
            if not (over_count or over_bytes) or not victims:
                return
            victim = min(victims, key=lambda n: self._last_used.get(n, 0.0))
            self._activated.discard(victim)
            self.evictions += 1
            log.info("unloaded %s (least recently used) to stay under %s", victim,
                     "serving.max_models_in_memory" if over_count else "serving.memory_budget")
            await self.reload()

    def model_names(self) -> list[str]:
        return sorted(self._live)

    def project(self, needed_for: str) -> Any:
        """The project this server was built over (its route table and its registry hold it), or a
        :class:`BackendUnavailable` saying what ``needed_for`` cannot do without one."""
        for holder in (self.routes, self.source):
            project = getattr(holder, "project", None)
            if project is not None:
                return project
        raise BackendUnavailable("metadata database", "(not configured)",
                                 f"this server was built without a project, so it cannot {needed_for}")

    def live_route(self, model: str) -> LiveRoute:
        live = self._live.get(model)
        if live is None:
            failed = self.load_errors.get(model)
            if failed is not None:
                raise NotFoundError("model", model, f"it could not be loaded: {failed}")
            if self.wants_lazily(model):
                raise NotFoundError("model", model, "it is not loaded yet: it loads on its first inference "
                                    f"request (or POST /v2/repository/models/{model}/load)")
            raise NotFoundError("model", model, f"served models are: {', '.join(sorted(self._live)) or 'none'}")
        return live

    def deployed(self, model: str, version: int | None = None) -> Deployed:
        """The version answering by default (``version`` None) or a specific served version."""
        live = self.live_route(model)
        if version is None:
            return live.live[0][1]
        for d in live.versions():
            if d.version == version:
                return d
        served = ", ".join(str(d.version) for d in live.versions())
        raise NotFoundError("model version", f"{model}/{version}", f"versions being served: {served}")

    # ---- reload ----------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Once per outage, not every poll: a database restart must not flood the log.
                if not self._reload_failing:
                    log.exception("reloading routes failed; keeping the previous ones until it works again")
                self._reload_failing = True
            else:
                if self._reload_failing:
                    log.warning("reloading routes works again")
                self._reload_failing = False

    async def reload(self, *, raise_errors: bool = False) -> None:
        """Re-read routes and aliases now; load new versions, then swap (what the poll does)."""
        async with self._reload_lock:
            new_live = await asyncio.to_thread(self._refresh, raise_errors)
            self._live = new_live
            keep = {(d.name, d.version) for lr in new_live.values() for d in lr.versions()}
            for key in [k for k in self._deployed if k not in keep]:
                del self._deployed[key]  # requests still holding it finish on it

    def _refresh(self, raise_errors: bool) -> dict[str, LiveRoute]:
        for hook in self.reload_hooks:
            try:
                hook()
            except Exception as exc:
                if not self._reload_failing:
                    log.warning("reload hook %s failed: %s", getattr(hook, "__qualname__", hook), exc)
        return self._resolve_all(raise_errors)

    def _wanted_names(self, stored: Mapping[str, Route] | None) -> list[str]:
        names = [parse_ref(r)[0] for r in self.config.models]
        names.extend(n for n in (stored or {}) if n not in names)
        names.extend(n for n in sorted(self._requested) if n not in names)
        if stored is None:
            names.extend(n for n in self._live if n not in names)
        return [n for n in names if n not in self._unloaded]

    def _loading(self, names: list[str]) -> list[str]:
        """Of the wanted models, those to load now: all of them, or with ``lazy`` the activated ones."""
        if not self.config.lazy:
            return names
        return [n for n in names if n in self._activated]

    # ---- the model repository (Triton's repository extension) -----------------------------

    def repository_names(self) -> list[str]:
        """Every model this server could serve: the source's models (the registry's), and those it serves."""
        names: set[str] = set(self._live) | set(self.load_errors) | self._unloaded
        names.update(parse_ref(r)[0] for r in self.config.models)
        models = getattr(self.source, "models", None)
        if callable(models):
            names.update(str(m.name) for m in models())
        return sorted(names)

    def repository_index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: each served version READY, every other model UNAVAILABLE with the reason."""
        out: list[dict[str, str]] = []
        for name in self.repository_names():
            live = self._live.get(name)
            if live is not None:
                out.extend({"name": name, "version": str(d.version), "state": "READY", "reason": ""}
                           for d in live.versions())
            elif not ready_only:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": self.model_readiness(name)[1]})
        return out

    def not_ready_reason(self, name: str) -> str:
        """Why ``name`` is not being served."""
        if name in self._unloaded:
            return "unloaded (POST /v2/repository/models/{name}/load loads it again)".replace("{name}", name)
        failed = self.load_errors.get(name)
        if failed is not None:
            return f"could not be loaded: {failed}"
        return "not loaded: not named by --model or a stored route (POST /v2/repository/models/" \
               f"{name}/load loads it)"

    async def load_model(self, name: str) -> LiveRoute:
        """Load ``name`` now (its stored route, its --model target, else its latest version) and serve it.

        A model that cannot be loaded is not kept wanted: the error is raised (NotFoundError for an
        unknown model) and the server's readiness is not changed by the attempt.
        """
        parse_ref(name)
        if name not in self._live:
            await asyncio.to_thread(self.source.resolve, name)  # an unknown model: NotFoundError (404)
        was_requested, was_unloaded = name in self._requested, name in self._unloaded
        was_active = name in self._activated
        self._unloaded.discard(name)
        self._requested.add(name)
        self._activated.add(name)
        self._last_used[name] = time.monotonic()
        crashed: str | None = None
        try:
            await self.reload()
        except Exception as exc:  # a flavor that raises something of its own while loading
            crashed = f"{type(exc).__name__}: {exc}"
        failed = self.load_errors.get(name) or crashed
        live = self._live.get(name)
        if live is None:  # not wanted after all: the failed attempt leaves things as they were
            if not was_requested:
                self._requested.discard(name)
            if was_unloaded:
                self._unloaded.add(name)
            if not was_active:
                self._activated.discard(name)
            self.load_errors.pop(name, None)
        else:
            await self._evict(keep=name)
        if failed is not None:
            kept = "" if live is None else f" (still serving version(s) {', '.join(str(d.version) for d in live.versions())})"
            raise ModelFailed(f"model {name} could not be loaded: {failed}{kept}", model=name)
        if live is None:
            raise ModelFailed(f"model {name} could not be loaded", model=name)
        return live

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name`` (until :meth:`load_model`); requests already running finish on it."""
        if name not in self._live:
            raise NotFoundError("model", name, f"it is not loaded; loaded models are: "
                                f"{', '.join(sorted(self._live)) or 'none'}")
        self._unloaded.add(name)
        self._requested.discard(name)
        self._activated.discard(name)
        await self.reload()

    def _resolve_all(self, raise_errors: bool) -> dict[str, LiveRoute]:
        stored = self.routes.all() if self.routes is not None else {}
        self._stored = stored
        defaults = {parse_ref(r)[0]: parse_ref(r)[1] for r in self.config.models}
        live: dict[str, LiveRoute] = {}
        errors: dict[str, str] = {}
        for name in self._loading(self._wanted_names(stored)):
            route = stored.get(name) or Route(name, [Variant("default", defaults.get(name) or "latest")])
            try:
                live[name] = self._resolve(route, defaults.get(name))
            except ModelmillError as exc:
                errors[name] = exc.message
                if name in self._live:  # keep serving what worked before, and say so
                    live[name] = self._live[name]
        for name, message in errors.items():
            if self.load_errors.get(name) != message:  # once per failure, not once per reload
                metrics.MODEL_LOAD_FAILURES.labels(name).inc()
                kept = f"; still serving version(s) {', '.join(str(d.version) for d in live[name].versions())}" \
                    if name in live else ""
                log.error("model %s: the version its route or alias names cannot be loaded: %s%s", name, message, kept)
        for name in self.load_errors.keys() - errors.keys():
            log.warning("model %s: loads again", name)
        self.load_errors = errors
        self.last_error = "; ".join(f"{n}: {m}" for n, m in errors.items()) or None
        if errors and raise_errors:
            log.warning("some served models could not be loaded: %s", self.last_error)
        return live

    def _resolve(self, route: Route, default_target: str | None) -> LiveRoute:
        live: list[tuple[Variant, Deployed]] = []
        shadows: list[tuple[Variant, Deployed]] = []
        for v in route.variants:
            target = v.target
            ref = route.model if (target == "latest" and default_target is None) else f"{route.model}@{target}"
            mv = self.source.resolve(ref)
            key = (str(mv.name), int(mv.version))
            dep = self._deployed.get(key)
            if dep is None:
                handle = self.source.load(mv)
                stats = self.stats.get(key)
                if stats is None:
                    stats = self.stats[key] = ModelStats(*key)
                dep = Deployed(handle, getattr(mv, "lineage", None) or {}, self.config, self._executor,
                               self._shadow_executor or concurrent.futures.ThreadPoolExecutor(1), stats)
                self._prepare(dep)
                self._deployed[key] = dep
                log.info("loaded %s version %s%s", dep.name, dep.version, " (compiled)" if dep.compiled else "")
            if v.shadow:
                shadows.append((v, dep))
            elif v.weight > 0:
                live.append((v, dep))
        return LiveRoute(route, live, shadows)

    def _prepare(self, dep: Deployed) -> None:
        """Work out the feature plan now, off the request path (it reads feature definitions)."""
        if self.features is None or not dep.lineage.get("feature_service"):
            return
        from modelmill.serving.predict import FeaturePlan

        try:
            dep.feature_plan = FeaturePlan.for_version(dep, self.features,
                                                       max_batch_size=self.config.max_batch_size,
                                                       max_wait_us=self.config.max_wait_us)
        except ModelmillError as exc:  # the predict route reports it; OIP infer still works
            log.warning("%s v%s: no feature plan: %s", dep.name, dep.version, exc.message)

    async def _publish_loop(self) -> None:
        """Move the request statistics into the Prometheus metrics twice a second (see RequestStats)."""
        while True:
            await asyncio.sleep(0.5)
            metrics.REQUESTS.publish()

    def _sample_loop(self) -> None:
        sampler = metrics.ResourceSampler()
        while not self._sampler_stop.is_set():
            try:
                sampler.sample()
            except Exception:  # sampling must never take the server down
                log.debug("resource sampling failed", exc_info=True)
            self._sampler_stop.wait(2.0)

    # ---- the prediction path ---------------------------------------------------------------

    def request_id(self) -> str:
        self._rid += 1
        return f"{self._rid_prefix}-{self._rid:x}"

    def check_rows(self, field: str, X: np.ndarray, dep: Deployed) -> None:
        """Refuse input the model cannot take, before it joins a batch with other callers' rows."""
        from modelmill.serving.limits import TooManyRows

        if X.ndim != 2 or X.shape[1] != dep.n_features:
            raise InputError(field, f"must have {dep.n_features} columns ({', '.join(dep.columns)})",
                             f"shape {list(X.shape)}")
        if len(X) > self.config.limits.max_batch_rows:
            raise TooManyRows(field, self.config.limits.max_batch_rows, len(X))
        if len(X) == 0:
            raise InputError(field, "has no rows")

    def serves(self, model: str) -> bool:
        return model in self._live

    def choose(self, model: str, *, routing_key: str | None = None, request_id: str | None = None,
               version: int | None = None) -> Choice:
        """Pick the variant (and so the version) that answers this request."""
        rid = request_id or self.request_id()
        live = self.live_route(model)
        if self.config.lazy:
            self._last_used[model] = time.monotonic()
        if version is None:
            variant, dep = live.pick(routing_key, rid)
            return Choice(live, variant.name, dep, rid, routing_key)
        dep = self.deployed(model, version)
        name = next((v.name for v, d in (*live.live, *live.shadows) if d is dep), "pinned")
        return Choice(live, name, dep, rid, routing_key)

    async def predict(self, model: str, X: np.ndarray, *, routing_key: str | None = None,
                      request_id: str | None = None, version: int | None = None) -> Prediction:
        """Choose a variant and predict ``X`` (``[n, k]`` float64, in signature order)."""
        choice = self.choose(model, routing_key=routing_key, request_id=request_id, version=version)
        return await self.run(choice, X)

    async def run(self, choice: Choice, X: np.ndarray, *, started: float | None = None,
                  field: str = "inputs", entities: Mapping[str, Any] | None = None,
                  missing: Sequence[str] | None = None, features_at: int | None = None) -> Prediction:
        """Check the cache, batch, predict, mirror to shadows and log.

        A request that fails here is logged by whoever answers it (:meth:`record`), with its status.
        """
        t0 = time.perf_counter() if started is None else started
        dep = choice.deployed
        self.check_rows(field, X, dep)
        out: np.ndarray | None = None
        key = ""
        cache = self.cache
        t_key = time.perf_counter()
        if cache is not None:
            key = cache.key(dep.name, dep.version, X)
            out = await cache.lookup(key)  # never waits on a hung shared store (see PredictionCache)
            if out is not None and out.size != len(X):  # several outputs per row: cached flat
                out = out.reshape(len(X), -1)
            (metrics.CACHE_HITS if out is not None else metrics.CACHE_MISSES).labels(dep.name).inc()
        cached = out is not None
        if cache is not None:
            dep.stats.cache(cached, int((time.perf_counter() - t_key) * 1e9))
        if out is None:
            t_sub = time.perf_counter()
            try:
                out, infer_ns = _split(await dep.batcher.submit(X))
                waited = time.perf_counter()
                choice.timings = (int((t_key - t0) * 1e9), max(0, int((waited - t_sub) * 1e9) - infer_ns), infer_ns)
            except Exception as exc:
                raise ModelFailed(f"model {dep.name} version {dep.version} could not predict on this input: "
                                  f"{type(exc).__name__}: {exc}", model=dep.name, version=dep.version) from exc
            if not np.isfinite(out).all():
                raise ModelFailed(f"model {dep.name} version {dep.version} returned NaN or infinity for this "
                                  "input", model=dep.name, version=dep.version)
            if cache is not None:
                cache.put(key, out)
        choice.answered_at = time.perf_counter()
        rid, routing_key = choice.request_id, choice.routing_key
        for sv, sdep in choice.live.shadows:  # a shadow's row carries the request's entities too (skew checks it)
            self._mirror(sv.name, sdep, X, rid, routing_key, (entities, missing, features_at))
        if self.predlog is not None:
            self.predlog.append(rid, dep.name, dep.version, choice.variant, routing_key, dep.columns, X, _logged(out, dep.task),
                                (time.perf_counter() - t0) * 1000.0, entities=entities, missing=missing,
                                features_at=features_at, probabilities=_probabilities(out, dep.task))
        return Prediction(out, dep.name, dep.version, choice.variant, rid, cached)

    def record(self, model: str, route: str, choice: Choice | None, status: int, t0: float,
               error: BaseException | None = None, *, entities: Mapping[str, Any] | None = None,
               missing: Sequence[str] | None = None) -> None:
        """Count one answered request and its latency (unknown model names share one label).

        A request is labelled with the variant and version chosen for it, whether it succeeded or
        failed, so a failing canary's errors are charged to the canary; only a request refused
        before a variant was chosen (unknown model, malformed body) has empty labels. A failed
        request with a chosen variant is written to the prediction log too (a success was logged
        when it was answered), so the log alone holds every outcome.
        """
        now = time.perf_counter()
        seconds = now - t0
        if choice is not None:
            tm = choice.timings
            if status == 200 and tm is not None:
                choice.deployed.stats.request(ok=True, total_ns=int(seconds * 1e9), input_ns=tm[0], queue_ns=tm[1],
                                              infer_ns=tm[2], output_ns=int((now - choice.answered_at) * 1e9))
            else:
                choice.deployed.stats.request(ok=status == 200, total_ns=int(seconds * 1e9))
        if status != 200 and choice is not None and self.predlog is not None:
            if missing is None and isinstance(error, ModelmillError):
                missing = error.context.get("missing")
            dep = choice.deployed
            self.predlog.append_failure(choice.request_id, dep.name, dep.version, choice.variant, choice.routing_key,
                                        status, type(error).__name__ if error is not None else f"HTTP {status}",
                                        seconds * 1000.0, entities=entities, missing=missing)
        version, variant = (str(choice.deployed.version), choice.variant) if choice is not None else ("", "")
        if choice is None and not self.serves(model):
            model = "(unknown)"
        metrics.REQUESTS.answered(route, model, version, variant, str(status), seconds)

    def _mirror(self, variant: str, dep: Deployed, X: np.ndarray, rid: str, routing_key: str | None,
                meta: tuple[Mapping[str, Any] | None, Sequence[str] | None, int | None] = (None, None, None)) -> None:
        if len(self._shadow_tasks) >= self.config.max_shadow_inflight:
            self.shadow_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._shadow(variant, dep, X, rid, routing_key, meta))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, variant: str, dep: Deployed, X: np.ndarray, rid: str, routing_key: str | None,
                      meta: tuple[Mapping[str, Any] | None, Sequence[str] | None, int | None]) -> None:
        t0 = time.perf_counter()
        entities, missing, features_at = meta
        try:
            out, _ = _split(await dep.shadow_batcher.submit(X))
            if not np.isfinite(out).all():
                raise ValueError("the model returned NaN or infinity")
        except Exception as exc:
            # Nobody waits on a shadow: its failures are counted and logged as a 422 (a model failure), never
            # raised.
            metrics.SHADOW_ERRORS.labels(dep.name, str(dep.version), variant).inc()
            log.debug("shadow %s of %s failed: %s", variant, dep.name, exc)
            if self.predlog is not None:
                self.predlog.append_failure(rid, dep.name, dep.version, variant, routing_key, 422, type(exc).__name__,
                                            (time.perf_counter() - t0) * 1000.0, entities=entities, missing=missing)
            return
        if self.predlog is not None:
            self.predlog.append(rid, dep.name, dep.version, variant, routing_key, dep.columns, X, _logged(out, dep.task),
                                (time.perf_counter() - t0) * 1000.0, entities=entities, missing=missing,
                                features_at=features_at, probabilities=_probabilities(out, dep.task))
