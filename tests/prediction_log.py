"""Fixture prediction logs written by the server's own writer, so that readers meet the rows serving writes.

A hand-built table drifts from serving's schema without any test noticing (``features`` as JSON text, a string
feature a ``map<string, double>`` cannot hold); the real :class:`~modelmill.serving.PredictionLog` cannot.
The one liberty taken is the time: the writer stamps each row with the wall clock, and a test that replays
traffic of a past hour names each request's time instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from modelmill.serving import PredictionLog


class _Backdated:
    """The offline store as the writer sees it, with each row's ``ts`` set to its request's chosen time."""

    def __init__(self, offline: Any, at: Mapping[str, dt.datetime]) -> None:
        self.offline = offline
        self.at = at

    def write(self, table: str, data: pa.Table, **options: Any) -> Any:
        i = data.schema.get_field_index("ts")
        stamps = pa.array([self.at[r] for r in data.column("request_id").to_pylist()], data.schema.field(i).type)
        return self.offline.write(table, data.set_column(i, data.schema.field(i), stamps), **options)


@contextmanager
def prediction_log(offline: Any, *, at: Mapping[str, dt.datetime] | None = None) -> Iterator[PredictionLog]:
    """The server's prediction-log writer on ``offline``, flushed (every row written) when the block ends.

    ``at`` maps every request id to the time its row is stamped with (default: the wall clock, as served).

        >>> import tempfile, numpy as np
        >>> from modelmill.store import OfflineStore
        >>> store = OfflineStore(tempfile.mkdtemp())
        >>> with prediction_log(store, at={"r1": dt.datetime(2013, 7, 1, tzinfo=dt.UTC)}) as log:
        ...     log.append("r1", "m", 1, "main", None, ("x",), np.array([[2.0]]), np.array([0.5]), 3.0)
        >>> store.read("predictions").select(["ts", "features"]).to_pylist()[0]["features"]
        [('x', 2.0)]
    """
    writer = PredictionLog(offline if at is None else _Backdated(offline, at))
    yield writer
    writer.flush()
    if writer.dropped:
        raise AssertionError(f"the prediction log dropped {writer.dropped} fixture rows")
