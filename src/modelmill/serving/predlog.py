"""The prediction log's writer, as serving knows it: owned by :mod:`modelmill.store.feedback`.

Kept so that ``from modelmill.serving.predlog import PredictionLog`` (and the schema and status
helpers) go on working; the log, the labels and the one label join live in the store.
"""

from __future__ import annotations

from modelmill.store.feedback import ANSWERED, ERROR_STATUS, PREDICTIONS_SCHEMA, PredictionLog, is_error

__all__ = ["ANSWERED", "ERROR_STATUS", "PREDICTIONS_SCHEMA", "PredictionLog", "is_error"]
