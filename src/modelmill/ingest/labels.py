"""Ground truth from a broker: label events ``{"model", "id", "label", "ts"?}`` on a stream, stored as labels.

Any broker the project reads (``local://``, ``kafka://``, ``nats://``, ``redis://``; see
:mod:`modelmill.ingest.source`) carries them; ``modelmill labels consume`` runs this consumer.
Each poll is one micro-batch:

1. every event is checked on its own, with :func:`modelmill.store.feedback.check_label` against the task of
   its model's newest version (:func:`~modelmill.store.feedback.model_task`): the one check that
   ``POST /v1/models/{name}/labels`` and ``modelmill labels ingest`` use;
2. the events that pass are stored by :func:`~modelmill.store.feedback.write_labels`, one call per model,
   which counts them accepted, duplicate or unknown;
3. the events that fail go to the dead-letter store (schema ``labels``) with the reason, the field and
   the bytes as they arrived (``modelmill ingest dead-letters --schema labels``; once their model is
   registered, :func:`replay_label_dead_letters`, ``modelmill labels replay-dead-letters``, stores them);
4. only then is the poll acked (the offsets committed).

So delivery is at least once: after a crash between the write and the ack the broker hands the batch
again, and its labels come back as duplicates (the same id, label and ``ts``), which are counted and not
stored twice; the newest ``ts`` wins in any case. Events should carry ``ts``: one without it is stamped
when it arrives, so a redelivered copy is a duplicate only while it still equals the id's current label.
The dead letters of a batch redelivered that way are stored again.

    >>> import tempfile, orjson
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.ingest.source import open_publisher, open_source
    >>> from modelmill.serving.models import FunctionModel, StaticSource
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> models = StaticSource([FunctionModel("clf", 1, ["x"], lambda X: X[:, 0])])
    >>> with open_publisher(p.settings.broker, stream="labels") as pub:
    ...     pub.publish([orjson.dumps({"model": "clf", "id": "r1", "label": 1}), b"{not json"])
    >>> source = open_source(p.settings.broker, stream="labels", group="labels")
    >>> stats = LabelConsumer(p, source, models=models).run(once=True, idle_s=0.1)
    >>> stats.unknown, stats.dead_letters
    (1, 1)
    >>> p.close()
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import orjson

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.ingest.deadletters import DeadLetters
from modelmill.ingest.source import Polled, Source
from modelmill.ingest.validation import Rejected
from modelmill.project import Project
from modelmill.store.feedback import LabelCounts, LabelTask, check_label, model_task, write_labels

__all__ = ["LABEL_REASONS", "LABEL_SCHEMA", "LabelConsumer", "LabelReplay", "LabelStreamStats",
           "replay_label_dead_letters"]

#: The schema name the dead letters of label events are stored under.
LABEL_SCHEMA = "labels"
#: Why a label event is dead-lettered.
LABEL_REASONS = ("oversized", "invalid_json", "not_an_object", "missing_required", "unknown_model", "invalid_task",
                 "invalid_label", "wrong_type", "out_of_range")


@dataclasses.dataclass
class LabelStreamStats:
    """Counters of one run: events polled, labels accepted / duplicate / unknown, events dead-lettered."""

    polled: int = 0
    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0
    dead_letters: int = 0
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


class LabelConsumer:
    """Moves the label events of one stream into the labels, dead-lettering the ones that do not fit.

    ``models`` resolves a model's newest version (default: the project's registry); it is asked again
    each batch, so a model registered while the consumer runs is known from the next batch on.
    """

    def __init__(self, project: Project, source: Source, *, models: Any = None, batch_size: int = 10_000) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError("batch_size", "must be a whole number of at least 1", batch_size)
        if models is None:
            from modelmill.registry import Registry

            models = Registry(project)
        self.project = project
        self.source = source
        self.models = models
        self.batch_size = batch_size
        self.letters = DeadLetters(project.db)
        self.stats = LabelStreamStats()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"LabelConsumer(source={self.source!r})"

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch it holds and return (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, max_seconds: float | None = None, once: bool = False, idle_s: float = 2.0) -> LabelStreamStats:
        """Consume until :meth:`stop`, ``max_seconds`` passed, or, with ``once``, nothing came for ``idle_s``
        seconds (the stream is drained for this group)."""
        stats = self.stats
        started = last_event = time.monotonic()
        # A poll never outlasts half the broker's redelivery timer: what it gathers is acked before the broker
        # hands the same events out again.
        redelivery = self.source.redelivery_after
        wait = min(0.5, idle_s, redelivery / 2) if redelivery is not None else min(0.5, idle_s)
        self.source.open()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                left = None if max_seconds is None else max_seconds - (now - started)
                if left is not None and left <= 0:
                    break
                polled = self.source.poll(self.batch_size, wait if left is None else max(0.0, min(wait, left)))
                if len(polled):
                    self._commit(polled)
                    last_event = time.monotonic()
                elif self.source.exhausted or (once and time.monotonic() - last_event >= idle_s):
                    break
        finally:
            stats.seconds = time.monotonic() - started
            self.source.close()
        return stats

    def _commit(self, polled: Polled) -> None:
        rejected = list(polled.rejected)
        events: list[dict[str, Any]] = []
        tasks: dict[str, LabelTask | Rejected] = {}  # per batch: a task changed or a model registered is seen
        for i, payload in enumerate(polled.payloads):
            event = _check_event(i, payload, tasks, self.models)
            if isinstance(event, Rejected):
                rejected.append(event)
            else:
                events.append(event)
        counts = _store(self.project, events, tasks)
        stats = self.stats
        stats.accepted += counts.accepted
        stats.duplicates += counts.duplicates
        stats.unknown += counts.unknown
        if rejected:
            with self.project.db.begin() as conn:
                self.letters.add(conn, schema=LABEL_SCHEMA, stream=self.source.stream, rejected=rejected)
        self.source.ack([polled])  # after the labels and the dead letters are written: at least once
        stats.polled += len(polled)
        stats.dead_letters += len(rejected)
        stats.batches += 1


def _check_event(i: int, payload: bytes, tasks: dict[str, LabelTask | Rejected], models: Any
                 ) -> dict[str, Any] | Rejected:
    """The label event ``payload`` (``i`` in its batch), checked against its model's task, or why it is rejected.

    ``tasks`` caches each model's task (or why it has none) for the batch.
    """
    def reject(reason: str, detail: str, field: str | None = None) -> Rejected:
        return Rejected(reason, detail, payload, field, i)

    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return reject("invalid_json", f"not JSON: {exc}")
    if not isinstance(event, dict):
        return reject("not_an_object", 'a label event is an object {"model", "id", "label", "ts"?}')
    for field in ("model", "id", "label"):
        if event.get(field) is None and not (field == "id" and event.get("request_id") is not None):
            return reject("missing_required", f"{field}: is required in a label event", field)
    model = event["model"]
    if not isinstance(model, str):
        return reject("wrong_type", f"model: must be a model's name (got {model!r})", "model")
    task = tasks.get(model)
    if task is None:
        try:
            task = model_task(models, model)
        except NotFoundError as exc:
            task = Rejected("unknown_model", exc.message, b"", "model")
        except ConflictError as exc:
            task = Rejected("invalid_task", exc.message, b"", "model")
        except InputError as exc:
            task = Rejected("wrong_type", exc.message, b"", "model")
        tasks[model] = task
    if isinstance(task, Rejected):
        return reject(task.reason, task.detail, task.field)
    try:
        check_label(event, task)
    except InputError as exc:
        reason = ("invalid_label" if exc.field == "label" else
                  "out_of_range" if exc.field == "ts" and "between" in exc.problem else "wrong_type")
        return reject(reason, exc.message, exc.field)
    return event


def _store(project: Project, events: list[dict[str, Any]], tasks: dict[str, LabelTask | Rejected]) -> LabelCounts:
    """Write checked events through the one label writer, one call per model; the counts summed."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_model.setdefault(event["model"], []).append(event)
    accepted = duplicates = unknown = 0
    for model, rows in by_model.items():
        task = tasks[model]
        assert isinstance(task, LabelTask)  # the events of a model without one were rejected
        counts = write_labels(project.offline, model, rows, task=task)
        accepted, duplicates, unknown = (accepted + counts.accepted, duplicates + counts.duplicates,
                                         unknown + counts.unknown)
    return LabelCounts(accepted=accepted, duplicates=duplicates, unknown=unknown)


@dataclasses.dataclass(frozen=True)
class LabelReplay:
    """What :func:`replay_label_dead_letters` did: labels stored now (accepted, duplicates, unknown, as the
    writer counts them) and dead letters still failing."""

    accepted: int
    duplicates: int
    unknown: int
    still_failing: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def replay_label_dead_letters(project: Project, *, models: Any = None, stream: str | None = None,
                              chunk: int = 10_000) -> LabelReplay:
    """Check the pending dead letters of label events again (after registering their model, or recording its
    task) and store those that pass now, through the one label writer.

    The ones stored are marked replayed after the write (a crash in between stores them again as
    duplicates); the others keep their place with their new reason.
    """
    if models is None:
        from modelmill.registry import Registry

        models = Registry(project)
    letters = DeadLetters(project.db)
    accepted = duplicates = unknown = failing = 0
    after = 0
    while True:
        batch = letters.list(schema=LABEL_SCHEMA, stream=stream, limit=chunk, after_id=after)
        if not batch:
            break
        after = batch[-1].id
        tasks: dict[str, LabelTask | Rejected] = {}
        checked = [_check_event(i, d.payload, tasks, models) for i, d in enumerate(batch)]
        passed = [e for e in checked if not isinstance(e, Rejected)]
        counts = _store(project, passed, tasks)
        with project.db.begin() as conn:
            letters.mark_replayed(conn, [d.id for d, e in zip(batch, checked, strict=True)
                                         if not isinstance(e, Rejected)])
            letters.update_reasons(conn, [(d.id, e) for d, e in zip(batch, checked, strict=True)
                                          if isinstance(e, Rejected)])
        accepted, duplicates, unknown = (accepted + counts.accepted, duplicates + counts.duplicates,
                                         unknown + counts.unknown)
        failing += len(checked) - len(passed)
    return LabelReplay(accepted=accepted, duplicates=duplicates, unknown=unknown, still_failing=failing)
