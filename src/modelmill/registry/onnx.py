"""ONNX export (skl2onnx, onnxmltools for LightGBM and XGBoost, CatBoost's own exporter, torch.onnx) and INT8 dynamic quantisation with an accuracy check.

An exported model is registered as a new version of the same name with flavor
``onnx``; it loads to the same :class:`~modelmill.registry.LoadedModel`
interface, run by onnxruntime. A quantised variant is registered only when its
AUC is no more than ``max_auc_drop`` below the model it came from.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.random.default_rng(0).normal(size=(200, 3)); y = (X[:, 0] > 0).astype(int)
    >>> proto = to_onnx(LogisticRegression().fit(X, y), "sklearn", n_features=3)
    >>> [o.name for o in proto.graph.output]
    ['label', 'probabilities']
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelmill.errors import InputError
from modelmill.registry.evaluate import Comparison, compare
from modelmill.registry.flavors import onnx_predict
from modelmill.registry.registry import Registry
from modelmill.registry.versions import ModelVersion

__all__ = ["export_onnx", "quantize", "quantize_int8", "to_onnx"]

OPSET = 17
_LIGHTGBM_OPSET = 15  # the newest onnxmltools' LightGBM converter accepts


def to_onnx(model: Any, flavor: str, *, n_features: int, options: Mapping[str, Any] | None = None) -> Any:
    """An ``onnx.ModelProto`` for a native model; input ``input`` is float32 ``[n, n_features]``.

    Classifiers export their probabilities as a tensor (no ZipMap), so the ONNX model
    scores exactly like the native one.
    """
    if flavor == "sklearn":
        from skl2onnx import to_onnx as skl_to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        _patch_skl2onnx_hist_gradient_boosting()
        try:
            return _clean_opsets(skl_to_onnx(
                model, initial_types=[("input", FloatTensorType([None, n_features]))],
                options={"zipmap": False} if hasattr(model, "predict_proba") else None,
                target_opset={"": OPSET, "ai.onnx.ml": 3}))
        except Exception as exc:  # skl2onnx raises many kinds; name the model and the reason
            raise InputError("model", f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc
    if flavor == "lightgbm":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

        return onnxmltools.convert_lightgbm(model, initial_types=[("input", MLFloatTensorType([None, n_features]))],
                                            zipmap=False, target_opset=_LIGHTGBM_OPSET)
    if flavor == "xgboost":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

        try:
            return onnxmltools.convert_xgboost(model, initial_types=[("input", MLFloatTensorType([None, n_features]))],
                                               target_opset=_LIGHTGBM_OPSET)
        except Exception as exc:  # onnxmltools raises many kinds; name the model and the reason
            raise InputError("model", f"onnxmltools cannot convert {type(model).__name__}: {exc}") from exc
    if flavor == "catboost":
        return _catboost_to_onnx(model)
    if flavor == "torch":
        return _torch_to_onnx(model, n_features, str((options or {}).get("output", "logit")))
    if flavor == "onnx":
        import onnx

        return onnx.load_from_string(bytes(model)) if isinstance(model, bytes | bytearray) else model
    raise InputError("flavor", "ONNX export supports sklearn, lightgbm, xgboost, catboost and torch models", flavor)


def export_onnx(registry: Registry, mv: ModelVersion | str, *, actor: str = "api") -> ModelVersion:
    """Convert a registered version to ONNX and register it as the next version of the same model."""
    src = registry.resolve(mv) if isinstance(mv, str) else mv
    loaded = registry.load(src)
    proto = to_onnx(loaded.raw, src.flavor, n_features=len(src.signature.inputs), options=loaded.options)
    if loaded.options.get("task") == "multiclass" and loaded.options.get("classes"):
        # the native model's class labels (XGBoost's graph says 0..K-1, the trainer's labels are the user's)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "modelmill_classes", json.dumps([str(c) for c in loaded.options["classes"]])
    return registry.register(
        src.name, proto, flavor="onnx", signature=src.signature, run_id=src.run_id, metrics=dict(src.metrics),
        lineage={**src.lineage, "derived_from": src.ref, "derivation": f"onnx export of {src.flavor}"},
        tags={**src.tags, "format": "onnx"}, actor=actor,
    )


def quantize_int8(data: bytes) -> bytes:
    """INT8 dynamic quantisation (weights int8, activations quantised at run time) of an ONNX model.

    Only MatMul/Gemm-style operators are quantised: a tree ensemble comes back unchanged in
    substance, a neural network shrinks about 4x.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    data = _clean_opsets(onnx.load_from_string(data)).SerializeToString()
    # Advice the quantiser logs on the root logger: pre-processing (optional) and the opset bump it does itself.
    quiet = _DropRecords("pre-processing before quantization", "does not support quantization")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="mm-quant-") as tmp:
            src, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.removeFilter(quiet)


class _DropRecords(logging.Filter):
    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(t in message for t in self.texts)


def quantize(registry: Registry, mv: ModelVersion | str, X: Any, y: Any, *, max_auc_drop: float = 0.005,
             register: bool = True, threads: int | None = 1, actor: str = "api",
             timing: Mapping[str, Any] | None = None) -> Comparison:
    """Quantise ``mv`` to INT8, compare AUC and latency with ``mv`` on ``X, y``, register it if accepted.

    ``mv`` may be any flavor that exports to ONNX; the comparison is always against ``mv``
    itself. A variant whose AUC drops by more than ``max_auc_drop`` is rejected: the returned
    :class:`Comparison` says so in ``reason`` and nothing is registered. ``timing`` is passed
    to :func:`~modelmill.registry.measure_latency`.
    """
    src = registry.resolve(mv) if isinstance(mv, str) else mv
    original = registry.load(src, threads=threads)
    if src.flavor == "onnx":
        fp32 = registry.project.artifacts.get_bytes(src.artifact_path, sha256=src.sha256)
    else:
        fp32 = to_onnx(original.raw, src.flavor, n_features=len(src.signature.inputs),
                       options=original.options).SerializeToString()
    int8 = quantize_int8(fp32)
    predict, _session = onnx_predict(int8, threads=threads)
    result = compare("int8", original.predict, predict, X, y, metric_name="auc", max_drop=max_auc_drop,
                     sizes=(src.size, len(int8)), timing=timing)
    if not (result.accepted and register):
        return result
    version = registry.register(
        src.name, int8, flavor="onnx", signature=src.signature, run_id=src.run_id, metrics={"auc": result.after},
        lineage={**src.lineage, "derived_from": src.ref, "derivation": "onnxruntime dynamic INT8 quantisation"},
        tags={**src.tags, "format": "onnx", "quantized": "int8"}, actor=actor,
    )
    return result.with_version(version)


def _catboost_to_onnx(model: Any) -> Any:
    """CatBoost's own ONNX export, its classifier's ZipMap dropped so that ``probabilities`` is a tensor."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            model.save_model(str(path), format="onnx")
        except Exception as exc:  # CatBoostError: e.g. a model with categorical features
            raise InputError("model", f"CatBoost cannot export {type(model).__name__} to ONNX: {exc}") from exc
        proto = onnx.load(str(path))
    graph = proto.graph
    for node in [n for n in graph.node if n.op_type == "ZipMap"]:
        tensor = node.input[0]
        graph.node.remove(node)
        for i, out in enumerate(graph.output):
            if out.name == node.output[0]:
                graph.output.remove(out)
                graph.output.insert(i, onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                          [None, None]))
        for other in graph.node:  # the tensor keeps the output's name
            other.output[:] = [node.output[0] if o == tensor else o for o in other.output]
    return proto


def _torch_to_onnx(model: Any, n_features: int, output: str) -> Any:
    """Export the module as it is, then append the activation its flavor applies, so ONNX emits the score."""
    import io

    import torch

    import onnx

    model.eval()
    with torch.inference_mode():
        probe = model(torch.zeros(2, n_features))
    width = 1 if probe.dim() == 1 else int(probe.reshape(2, -1).shape[1])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated; the new one needs onnxscript
        torch.onnx.export(model, (torch.zeros(2, n_features),), buf,  # type: ignore[arg-type]
                          input_names=["input"], output_names=["raw"],
                          dynamic_axes={"input": {0: "n"}, "raw": {0: "n"}}, opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    return _append_score(proto, output=output, width=width, flat=probe.dim() == 1)


def _append_score(proto: Any, *, output: str, width: int, flat: bool) -> Any:
    """Turn the graph's ``raw`` output ([n] or [n, 1|2] logits, probabilities or values) into ``probability`` [n, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    current = graph.output[0].name
    step = 0

    def add(op: str, inputs: list[str], **attrs: Any) -> None:
        nonlocal current, step
        step += 1
        out = f"mm_score_{step}"
        graph.node.append(helper.make_node(op, [current, *inputs], [out], **attrs))
        current = out

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    if flat:
        add("Unsqueeze", [const("mm_axes_1", [1])])
    if width == 2:
        if output == "logit":
            add("Softmax", [], axis=1)
        add("Slice", [const("mm_start", [1]), const("mm_end", [2]), const("mm_axis", [1])])
    elif width == 1 and output == "logit":
        add("Sigmoid", [])
    add("Identity", [])
    graph.node[-1].output[0] = "probability"
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 1]))
    return proto


def _clean_opsets(proto: Any) -> Any:
    """One import per domain (skl2onnx can list the default domain twice), the default one always present.

    onnxruntime's quantiser refuses a graph without exactly one default-domain import,
    which a pure tree-ensemble graph (ai.onnx.ml only) does not have.
    """
    from onnx import helper

    versions: dict[str, int] = {}
    for o in proto.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        versions[domain] = max(versions.get(domain, 0), o.version)
    versions.setdefault("", OPSET)
    del proto.opset_import[:]
    proto.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    return proto


_patched = False


def _patch_skl2onnx_hist_gradient_boosting() -> None:
    """skl2onnx 1.20 passes a Python bool for leaves' missing-value flag, which onnx >= 1.22 rejects."""
    global _patched
    if _patched:
        return
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    _patched = True
