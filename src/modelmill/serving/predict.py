"""The feature-backed route: ``POST /v1/models/{name}/predict`` with entity keys instead of features.

Request::

    {"entities": {"carrier": "UA", "origin": "EWR"},   # keys of the model's feature service
     "features": {"dep_hour": 7},                       # request-time features (optional)
     "routing_key": "user-42",                          # sticky A/B bucket (optional)
     "id": "order-7"}                                   # the prediction's id (optional)

Response::

    {"prediction": 0.18, "model": "flights", "version": 3, "variant": "champion", "request_id": "..."}

``prediction`` is a number for a binary classifier (the positive class's probability) or a regressor, a
list for a multi-output model, and the most probable class's name for a multiclass model, which also
answers ``probabilities`` (class name -> probability).

The model version's lineage names its feature service; its signature names
the columns. How each column is filled (from the online store, or from the
request) is worked out once per version in a :class:`FeaturePlan`, so a
request costs one online lookup and one array fill.

A client's ``id`` (at most ``serving.max_id_chars`` characters) becomes the
prediction's ``request_id``, as the OIP request's ``id`` does, so ground truth
can be posted under the client's own id (``POST /v1/models/{name}/labels``).
Under ``instances`` each instance may carry its own ``id``; an instance without
one, in a request with a top-level ``id``, gets ``<id>/<i>`` (the form the log
gives the rows of a multi-row OIP request); otherwise the server picks one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from modelmill.errors import BackendUnavailable, InputError, ModelmillError
from modelmill.features.definitions import match_columns
from modelmill.features.online import EXPIRED
from modelmill.serving import metrics
from modelmill.serving.batching import Batcher
from modelmill.serving.limits import TooManyRows, client_id, read_body
from modelmill.serving.responses import Incoming, ModelFailed, error_response, json_response, status_of
from modelmill.serving.server import Choice, Deployed, ModelServer, Prediction
from modelmill.serving.strings import StringCodes

__all__ = ["FeaturePlan", "MissingFeatures", "PredictRoute"]


class FeaturePlan:
    """Where each signature column of one model version comes from.

    Columns are matched to the feature service's references by
    :func:`~modelmill.features.definitions.match_columns`; any column no
    reference matches is a request-time feature the caller must send.

    >>> plan = FeaturePlan(["carrier_delay", "hour"], ["delays:carrier_delay"], ["carrier"])
    >>> plan.refs, plan.request_columns
    (['delays:carrier_delay'], ['hour'])
    """

    def __init__(self, columns: Sequence[str], service_refs: Sequence[str], entity_keys: Sequence[str] = (),
                 service: str | None = None, *, features: Any = None, max_batch_size: int = 64,
                 max_wait_us: int = 500, on_missing: str = "reject", defaults: Mapping[str, float] | None = None,
                 model: str = "", codes: StringCodes | None = None) -> None:
        self.columns = list(columns)
        self.codes = codes  # the model's string columns, sent as strings among the request-time features
        self.service = service
        self.model = model
        self.entity_keys = list(entity_keys)
        self.on_missing = on_missing
        refs: list[str] = []
        ref_pos: list[int] = []
        request: list[str] = []
        request_pos: list[int] = []
        for i, (col, ref) in enumerate(zip(self.columns, match_columns(self.columns, service_refs), strict=True)):
            if ref is None:
                request.append(col)
                request_pos.append(i)
            else:
                refs.append(ref)
                ref_pos.append(i)
        stored_strings = [self.columns[i] for i in ref_pos if codes is not None and i in codes.position_set]
        if stored_strings:
            # The online store holds numbers; a string column read from it would decode to a wrong category.
            raise InputError("signature.inputs", f"string column(s) {', '.join(stored_strings)} of model {model} "
                             "come from the online store, which serves numbers only: send them as request-time "
                             "features, or encode them as numbers in the feature view")
        self.refs = refs
        self.ref_pos = np.asarray(ref_pos, dtype=np.intp)
        self.request_columns = request
        self.request_index = dict(zip(request, request_pos, strict=True))
        # Concurrent requests share one online lookup (one Redis MGET) the way they share a model call.
        self.lookup: Batcher | None = None
        if refs and features is not None:
            # A remote online store is read in its own thread pool: a hung Redis must not stop the event loop.
            # Each looked-up row is the values, their status codes (present, missing, expired), and the time the
            # reads were judged at (microseconds; under the event clock, the watermark), which the log keeps
            # so that the skew check recomputes the features as of that time.
            def lookup(rows: Sequence[dict[str, Any]]) -> np.ndarray:
                at = features.now_us(fresh=True)
                values, status = features.online_vector(rows, refs, at_us=at)
                return np.hstack([values, status, np.full((len(rows), 1), float(at))])

            self.lookup = Batcher(lookup, flat=False,
                                  max_batch_size=max_batch_size, max_wait_us=max_wait_us,
                                  executor=features.online.executor,
                                  queue=(model, "", "features") if model else None)
        given = defaults or {}  # per reference; NaN marks a feature with no declared default
        self.default_row = np.array([given.get(r, np.nan) for r in refs], dtype=np.float64)

    def __repr__(self) -> str:
        return f"FeaturePlan(service={self.service!r}, refs={self.refs}, request={self.request_columns})"

    @classmethod
    def for_version(cls, dep: Deployed, features: Any, *, max_batch_size: int = 64,
                    max_wait_us: int = 500) -> FeaturePlan:
        service = dep.lineage.get("feature_service")
        if not service:
            return cls(dep.columns, [], codes=dep.codes)
        if features is None:
            raise BackendUnavailable("feature store", "(not configured)",
                                     f"model {dep.name} v{dep.version} reads feature service {service!r}")
        svc = features.feature_service(service)
        refs = [str(r) for r in svc.features]
        return cls(dep.columns, refs, _entity_keys(features, refs), service, features=features,
                   max_batch_size=max_batch_size, max_wait_us=max_wait_us, on_missing=svc.on_missing,
                   defaults=svc.default_values, model=dep.name, codes=dep.codes)

    async def build(self, entities: dict[str, Any], given: dict[str, Any]
                    ) -> tuple[np.ndarray, list[str], int | None]:
        """One input row, the features the online store did not have (absent or expired), and the time (us)
        its reads were judged at (None without a lookup).

        The feature service's ``on_missing`` policy applies here: :class:`MissingFeatures` (422) under
        ``"reject"``, declared defaults under ``"default"``, NaN under ``"allow"``.
        """
        missing_keys = [k for k in self.entity_keys if k not in entities]
        if missing_keys:
            raise InputError("entities", f"misses the key(s) {', '.join(missing_keys)} of feature service "
                             f"{self.service}", sorted(entities))
        X = np.empty((1, len(self.columns)), dtype=np.float64)
        absent: list[str] = []
        at: int | None = None
        if self.lookup is not None:
            k = len(self.refs)
            looked = (await self.lookup.submit([entities])).reshape(-1)
            row, status, at = looked[:k], looked[k:2 * k], int(looked[-1])
            if status.any():
                absent = self._missing(entities, status, row)
            X[0, self.ref_pos] = row
        index = self.request_index
        codes = self.codes
        strings = codes.position_set if codes is not None else frozenset()
        for name, value in given.items():
            pos = index.get(name)
            if pos is None:
                raise InputError(f"features.{name}", "is not a request-time feature of this model; "
                                 f"those are: {', '.join(self.request_columns) or 'none'}")
            if pos in strings and codes is not None:
                if not isinstance(value, str):
                    raise InputError(f"features.{name}", "must be a string (a string column of the model)", value)
                X[0, pos] = codes.encode(pos, [value])[0]
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"features.{name}", "must be a number", value)
            X[0, pos] = value
        if len(given) < len(index):
            lacking = [c for c in self.request_columns if c not in given]
            raise InputError("features", f"misses request-time feature(s) {', '.join(lacking)}")
        return X, absent, at


    def _missing(self, entities: dict[str, Any], status: np.ndarray, row: np.ndarray) -> list[str]:
        """Count the lacking features, then apply the policy to ``row`` in place (or refuse the request)."""
        lacking = np.flatnonzero(status)
        names = [self.refs[i] for i in lacking]
        expired = [self.refs[i] for i in lacking if status[i] == EXPIRED]
        for i in lacking:
            reason = "expired" if status[i] == EXPIRED else "missing"
            metrics.MISSING_FEATURES.labels(self.model, self.refs[i], reason).inc()
        if self.on_missing == "allow":
            row[lacking] = np.nan  # an expired value is not passed on as if it were current
            return names
        if self.on_missing == "default":
            row[lacking] = self.default_row[lacking]
            undeclared = [self.refs[i] for i in lacking if np.isnan(self.default_row[i])]
            if not undeclared:
                return names
            raise MissingFeatures(self.model, entities, undeclared, [r for r in expired if r in undeclared],
                                  policy="default", service=self.service)
        raise MissingFeatures(self.model, entities, names, expired, policy="reject", service=self.service)


class MissingFeatures(ModelFailed):
    """The online store lacks features of a request's entity and the feature service's policy refuses it (422).

    A :class:`ModelFailed`: the chosen variant could not predict, so a rollout charges it to that variant.
    """

    def __init__(self, model: str, entities: Mapping[str, Any], missing: Sequence[str], expired: Sequence[str], *,
                 policy: str, service: str | None) -> None:
        absent = [r for r in missing if r not in expired]
        parts = ([f"missing {', '.join(absent)}"] if absent else []) + (
            [f"expired {', '.join(expired)}"] if expired else [])
        how = ("declare defaults for them, or set on_missing = 'allow' for a model that takes NaN"
               if policy == "default" else
               "materialize the feature view (under the event clock, check `modelmill features watermark`), "
               "check the entity keys, or set the feature service's on_missing to 'default' or 'allow'")
        super().__init__(f"no prediction for entity {dict(entities)}: the online store has {'; '.join(parts)} "
                         f"(feature service {service}, on_missing = {policy!r}); {how}", model=model)
        self.missing = list(missing)
        self.expired = list(expired)
        self.context.update(entities=dict(entities), missing=self.missing, expired=self.expired)


def _entity_keys(features: Any, refs: Sequence[str]) -> list[str]:
    """The join keys of the views behind ``refs``: what a request's ``entities`` must hold."""
    from modelmill.errors import NotFoundError

    keys: dict[str, None] = {}
    for view in dict.fromkeys(r.split(":", 1)[0] for r in refs):
        try:
            source = features.feature_view(view)
        except NotFoundError:
            source = features.stream_aggregation(view)
        for entity in source.entities:
            keys.update(dict.fromkeys(entity.join_keys))
    return list(keys)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"is not valid JSON ({exc})") from None
    if not isinstance(req, dict):
        raise InputError("body", "must be a JSON object with 'entities' (or 'instances')")
    return req


def _instance(req: Any, prefix: str = "", max_id_chars: int = 256
              ) -> tuple[dict[str, Any], dict[str, Any], str | None, str | None]:
    """Entity keys, request-time features, routing key and client id of one prediction request."""
    if not isinstance(req, dict):
        raise InputError(prefix.rstrip(".") or "body", "must be a JSON object with 'entities'")
    entities = req.get("entities")
    if not isinstance(entities, dict):
        raise InputError(f"{prefix}entities", "is required: an object of entity keys, such as {\"user_id\": 42}")
    for k, v in entities.items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise InputError(f"{prefix}entities.{k}", "must be a string or a number", v)
    given = req.get("features", {})
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InputError(f"{prefix}features", "must be an object of request-time features", given)
    key = req.get("routing_key")
    if key is not None and not isinstance(key, str):
        raise InputError(f"{prefix}routing_key", "must be a string", key)
    return entities, given, key, client_id(req.get("id"), f"{prefix}id", max_id_chars) or None


class PredictRoute:
    """``POST /v1/models/{name}/predict`` over one :class:`ModelServer`."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def plan(self, dep: Deployed) -> FeaturePlan:
        plan: FeaturePlan | None = dep.feature_plan
        if plan is None:
            cfg = self.server.config
            plan = dep.feature_plan = FeaturePlan.for_version(dep, self.server.features,
                                                              max_batch_size=cfg.max_batch_size,
                                                              max_wait_us=cfg.max_wait_us)
        return plan

    async def _one(self, name: str, entities: dict[str, Any], given: dict[str, Any], key: str | None,
                   t0: float, chosen: list[Choice], rid: str | None = None) -> dict[str, Any]:
        """One prediction; the variant chosen is appended to ``chosen`` before anything can fail."""
        server = self.server
        choice = server.choose(name, routing_key=key, request_id=rid)
        chosen.append(choice)
        plan = self.plan(choice.deployed)
        X, absent, at = await plan.build(entities, given)
        try:
            pred: Prediction = await server.run(choice, X, started=t0, field="features", entities=entities,
                                                missing=absent, features_at=at)
        except ModelFailed as exc:
            if absent:
                exc.message = (f"the online store has no value of {', '.join(absent)} for entity "
                               f"{entities} (feature service on_missing = {plan.on_missing!r}): {exc.message}")
                exc.context["missing"] = absent
            raise
        dep = choice.deployed
        row = pred.output[0]
        out: dict[str, Any]
        if dep.task == "multiclass":  # the most probable class, and every class's probability
            probs = row.tolist()
            names = dep.classes if len(dep.classes) == len(probs) else [str(i) for i in range(len(probs))]
            out = {"prediction": names[int(np.argmax(row))], "probabilities": dict(zip(names, probs, strict=True))}
        else:
            out = {"prediction": row.tolist() if np.ndim(row) else float(row)}
        out.update(model=pred.model, version=pred.version, variant=pred.variant, request_id=pred.request_id)
        if absent:
            out["missing"] = absent  # defaulted, or passed as NaN: the caller is told either way
        return out

    async def _many(self, name: str, instances: Any, key: str | None, t0: float,
                    rid: str | None = None) -> list[dict[str, Any]]:
        """``{"instances": [...]}``: each instance is routed, looked up, predicted, logged and counted as if
        it came alone (concurrent instances share the online lookup and the model call); an instance that
        fails gets ``{"error", "status"}`` in its place."""
        limit = self.server.config.limits.max_batch_rows
        if not isinstance(instances, list) or not instances:
            raise InputError("instances", "must be a non-empty list of prediction requests")
        if len(instances) > limit:
            raise TooManyRows("instances", limit, len(instances))
        max_id = self.server.config.limits.max_id_chars
        parsed = [_instance(item, f"instances[{i}].", max_id) for i, item in enumerate(instances)]
        if rid is not None:
            parsed = [(e, g, k, own if own is not None else f"{rid}/{i}") for i, (e, g, k, own) in enumerate(parsed)]

        async def guarded(entities: dict[str, Any], given: dict[str, Any], k: str | None,
                          own: str | None) -> dict[str, Any]:
            chosen: list[Choice] = []
            failure: BaseException | None = None
            try:
                out = await self._one(name, entities, given, k if k is not None else key, t0, chosen, own)
                status = 200
            except Exception as exc:
                failure, status = exc, status_of(exc)
                out = {"error": exc.message if isinstance(exc, ModelmillError) else f"internal error: "
                       f"{type(exc).__name__}", "status": status}
            self.server.record(name, "predict", chosen[0] if chosen else None, status, t0, failure,
                   entities=entities)
            return out

        return list(await asyncio.gather(*(guarded(*p) for p in parsed)))

    async def predict(self, request: Incoming) -> Response:
        t0 = time.perf_counter()
        server = self.server
        name = request.path_params["name"]
        limits = server.config.limits
        chosen: list[Choice] = []
        batch = False
        failure: BaseException | None = None
        entities: dict[str, Any] | None = None
        metrics.REQUESTS.inflight += 1
        try:
            async with server.deadlines:
                if not server.serves(name) and server.wants_lazily(name):
                    await server.ensure_loaded(name)  # [serving] lazy: the first request loads the model
                server.live_route(name)
                body = await read_body(request.receive, request.headers, limits.max_body_bytes)
                req = _parse(body)
                header_key = request.headers.get("x-routing-key")
                if "instances" in req:
                    key = req.get("routing_key")
                    if key is not None and not isinstance(key, str):
                        raise InputError("routing_key", "must be a string", key)
                    rid = client_id(req.get("id"), "id", limits.max_id_chars) or None
                    batch = True
                    results = await self._many(name, req["instances"], key if key is not None else header_key, t0,
                                               rid)
                    response = json_response({"predictions": results})
                else:
                    entities, given, key, rid = _instance(req, max_id_chars=limits.max_id_chars)
                    result = await self._one(name, entities, given, key if key is not None else header_key, t0,
                                             chosen, rid)
                    response = json_response(result)
        except Exception as exc:
            batch = False  # the request as a whole was refused: count it once
            failure = exc
            response = error_response(exc, timeout_s=limits.request_timeout_s)
        finally:
            metrics.REQUESTS.inflight -= 1
        if not batch:
            server.record(name, "predict", chosen[0] if chosen else None, response.status_code, t0, failure,
                   entities=entities)
        return response
