"""A served experiment's log, written the way a server writes it: through the real PredictionLog."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from tests.prediction_log import prediction_log


def log_served(offline: Any, model: str, rows: Sequence[tuple[str, str, int, str, float, float | None]]) -> None:
    """Log ``(request_id, variant, version, routing_key, output, label)`` rows with the server's writer, and the
    labels that arrived (``None``: no label yet) into offline table ``labels``."""
    with prediction_log(offline) as writer:
        for rid, variant, version, key, output, _ in rows:
            writer.append(rid, model, version, variant, key, ("x",), np.array([[output]]), np.array([output]), 1.0)
    assert writer.written == len(rows)
    labelled = [(rid, label) for rid, *_, label in rows if label is not None]
    if labelled:
        ts = pa.array([dt.datetime.now(dt.UTC)] * len(labelled), pa.timestamp("us", tz="UTC"))
        offline.write("labels", pa.table({"request_id": [r for r, _ in labelled], "ts": ts,
                                          "label": [float(y) for _, y in labelled]}), time_column="ts")
