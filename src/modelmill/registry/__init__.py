"""Model registry: versions, aliases, signatures, verified loading, ONNX export, optimisation and the gate.

Other stages use this surface only: ``Registry(project)`` to register, resolve and
load models; ``gate`` to decide whether a candidate may replace production.
"""

from __future__ import annotations

from modelmill.registry.aliases import AliasChange
from modelmill.registry.evaluate import Comparison, Latency, compare, measure_latency, score
from modelmill.registry.flavors import LoadedModel
from modelmill.registry.gate import Check, GateResult, gate, parse_thresholds, read_labelled
from modelmill.registry.onnx import export_onnx, quantize, quantize_int8, to_onnx
from modelmill.registry.optimise import (
    DistilledClassifier,
    distill,
    distill_version,
    prune,
    prune_version,
    sparsity,
)
from modelmill.registry.python_flavor import PythonContext
from modelmill.registry.registry import Registry, clear_cache
from modelmill.registry.signature import Field, Signature, infer_signature
from modelmill.registry.versions import MAX_VERSION, ModelVersion, RegisteredModel, check_version, parse_ref

__all__ = [
    "MAX_VERSION",
    "AliasChange",
    "Check",
    "Comparison",
    "DistilledClassifier",
    "Field",
    "GateResult",
    "Latency",
    "LoadedModel",
    "ModelVersion",
    "PythonContext",
    "RegisteredModel",
    "Registry",
    "Signature",
    "check_version",
    "clear_cache",
    "compare",
    "distill",
    "distill_version",
    "export_onnx",
    "gate",
    "infer_signature",
    "measure_latency",
    "parse_ref",
    "parse_thresholds",
    "prune",
    "prune_version",
    "quantize",
    "quantize_int8",
    "read_labelled",
    "score",
    "sparsity",
    "to_onnx",
]
