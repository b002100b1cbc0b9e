"""Serving: Open Inference Protocol v2, feature-backed predictions, batching, cache, traffic routing.

The pieces, each in its own module: :class:`ModelServer` (state and the one
prediction path), :class:`Batcher`, :class:`PredictionCache`,
:class:`RouteTable` / :class:`Variant` / :func:`bucket` (traffic routing),
:class:`PredictionLog`, :func:`create_app` (the ASGI app) and
:func:`predict_batch` (offline scoring, locally or as Ray tasks).
"""

from __future__ import annotations

from modelmill.serving.app import app_from_env, build_server, create_app
from modelmill.serving.batch import predict_batch
from modelmill.serving.batching import Batcher
from modelmill.serving.cache import PredictionCache
from modelmill.serving.limits import Limits
from modelmill.serving.models import FunctionModel, ModelHandle, ModelSource, StaticSource
from modelmill.serving.predlog import PredictionLog
from modelmill.serving.routing import Route, RouteTable, Variant, bucket
from modelmill.serving.server import ModelServer, Prediction, ServerConfig

__all__ = [
    "Batcher",
    "FunctionModel",
    "Limits",
    "ModelHandle",
    "ModelServer",
    "ModelSource",
    "Prediction",
    "PredictionCache",
    "PredictionLog",
    "Route",
    "RouteTable",
    "ServerConfig",
    "StaticSource",
    "Variant",
    "app_from_env",
    "bucket",
    "build_server",
    "create_app",
    "predict_batch",
]
