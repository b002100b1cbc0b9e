"""Flavors: how a model of one kind becomes bytes, and how bytes become a :class:`LoadedModel`.

Every flavor loads to the same interface, so that serving never asks what a
model is made of: ``predict(X)`` takes a float matrix ``[n, k]`` whose columns
follow ``signature.inputs`` and returns ``[n]`` float64 (the positive-class
probability for a binary classifier, the value for a regressor).

============  ==========================================  ==================================
flavor        accepts                                     stored as
============  ==========================================  ==================================
``sklearn``   any estimator with predict_proba / predict  joblib
``lightgbm``  LGBMClassifier/Regressor or a Booster       joblib
``xgboost``   XGBClassifier/XGBRegressor                  joblib
``catboost``  CatBoostClassifier/CatBoostRegressor        joblib
``torch``     ``nn.Module`` (or a TorchScript module)     state_dict + class, else TorchScript
``onnx``      ``onnx.ModelProto`` or its bytes            ONNX protobuf (onnxruntime session)
``python``    a class with ``load(context)``, ``predict``  zip: source, artifacts, sha256s
============  ==========================================  ==================================

``python`` (:mod:`modelmill.registry.python_flavor`) is your own code: its predict takes a DataFrame.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from modelmill.registry.signature import Field, Signature
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> sig = Signature(inputs=[Field("x")])
    >>> data = flavor("sklearn").dump(LogisticRegression().fit(X, y), sig)
    >>> m = flavor("sklearn").load(data, sig, name="demo", version=1, sha256="")
    >>> bool(m.predict(np.array([[3.0]]))[0] > 0.5)
    True
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from modelmill.errors import ConfigError, InputError
from modelmill.registry.signature import Signature

log = logging.getLogger("modelmill.registry")

__all__ = ["FLAVORS", "TASKS", "Flavor", "LoadedModel", "flavor", "task_of"]

Predict = Callable[[np.ndarray], np.ndarray]


class LoadedModel:
    """A model ready to predict, whatever its flavor."""

    __slots__ = ("_k", "_predict", "flavor", "name", "options", "raw", "sha256", "signature", "version")

    def __init__(self, *, name: str, version: int, flavor: str, signature: Signature, sha256: str,
                 predict: Predict, raw: Any, options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.version = version
        self.flavor = flavor
        self.signature = signature
        self.sha256 = sha256
        self.raw = raw  # the native object: estimator, Booster, nn.Module or onnxruntime session
        self.options = dict(options or {})  # what the flavor stored beside the model (torch: output kind)
        self._predict = predict
        self._k = len(signature.inputs)

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, version={self.version}, flavor={self.flavor!r})"

    def predict(self, X: Any) -> np.ndarray:
        """``[n, k]`` floats in signature order -> ``[n]`` float64 scores.

        A single row may be given as a 1-D array of length ``k``.
        """
        arr = np.asarray(X)
        if arr.ndim == 1 and arr.shape[0] == self._k:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self._k:
            raise InputError(
                "X",
                f"must be a matrix [n, {self._k}] with columns {', '.join(self.signature.input_names)} "
                f"for model {self.name} v{self.version}",
                f"shape {arr.shape}",
            )
        return self._predict(arr)


class Flavor:
    """One model format. Subclasses implement :meth:`dump` and :meth:`_load`."""

    name = ""
    extension = "bin"
    #: whether :meth:`_load` takes ``providers`` (onnxruntime's execution providers)
    takes_providers = False

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        raise NotImplementedError

    def load(self, data: bytes, signature: Signature, *, name: str, version: int, sha256: str,
             threads: int | None = None, providers: Sequence[str] | None = None) -> LoadedModel:
        """``providers``: the onnxruntime execution providers to try, in order (the ONNX flavour only)."""
        extra: dict[str, Any] = {"providers": providers} if providers and self.takes_providers else {}
        predict, raw, options = self._load(data, signature, threads=threads, **extra)
        options = {**options, "artifact_bytes": len(data)}  # serving's estimate of the model's memory
        return LoadedModel(name=name, version=version, flavor=self.name, signature=signature, sha256=sha256,
                           predict=predict, raw=raw, options=options)

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        raise NotImplementedError


# ---- scikit-learn and LightGBM: joblib ------------------------------------------------------------


TASKS = ("binary", "multiclass", "regression", "multi_output")


def task_of(model: Any) -> tuple[str, list[Any]]:
    """The task a fitted estimator (or pipeline) does, and its classes (empty for a regressor)."""
    fitted = getattr(model, "classes_", None)
    classes: list[Any] = list(fitted) if fitted is not None else []
    if hasattr(model, "predict_proba") and classes and np.ndim(classes[0]) == 0:
        return ("binary" if len(classes) <= 2 else "multiclass"), classes
    if hasattr(model, "predict_proba") and not hasattr(model, "predict"):
        return "binary", []  # a bare scorer (a wrapper with predict_proba only): its second column, as always
    steps = getattr(model, "steps", None)
    final = steps[-1][1] if isinstance(steps, list) and steps else model
    outputs = getattr(final, "n_outputs_", None)
    coef = getattr(final, "coef_", None)
    if outputs is None and coef is not None and np.ndim(coef) == 2:  # a linear model fitted on y [n, m]
        outputs = int(np.shape(coef)[0])
    if outputs is None and isinstance(getattr(final, "estimators_", None), list):  # MultiOutputRegressor
        outputs = len(final.estimators_) if type(final).__name__.startswith("MultiOutput") else None
    return ("multi_output" if isinstance(outputs, int) and outputs > 1 else "regression"), []


def _score_function(model: Any) -> Predict:
    """predict_proba[:, 1] for a binary classifier, every class's probability ``[n, C]`` for a multiclass
    one, predict for anything else (``[n, m]`` for a multi-output model)."""
    if getattr(model, "feature_names_in_", None) is not None or hasattr(model, "feature_name_"):
        # Fitted on a DataFrame, called with the signature-ordered matrix: the warning is noise here.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
    task, _ = task_of(model)
    proba = getattr(model, "predict_proba", None)
    if proba is not None and task == "binary":
        def predict(X: np.ndarray) -> np.ndarray:
            return np.asarray(proba(X), dtype=np.float64)[:, 1]
        return predict
    if proba is not None and task == "multiclass":
        def predict_classes(X: np.ndarray) -> np.ndarray:
            return np.asarray(proba(X), dtype=np.float64).reshape(len(X), -1)
        return predict_classes
    plain = model.predict
    if task == "multi_output":
        def predict_outputs(X: np.ndarray) -> np.ndarray:
            return np.asarray(plain(X), dtype=np.float64).reshape(len(X), -1)
        return predict_outputs

    def predict_plain(X: np.ndarray) -> np.ndarray:
        return np.asarray(plain(X), dtype=np.float64).reshape(len(X), -1)[:, -1]
    return predict_plain


def task_options(model: Any, signature: Signature) -> dict[str, Any]:
    """What serving needs to know of the model's outputs: ``task``, and ``classes`` (their names: the
    signature's output fields when there is one per class, else the estimator's ``classes_``)."""
    task, classes = task_of(model)
    opts: dict[str, Any] = {"task": task}
    if task in ("binary", "multiclass"):
        names = signature.output_names
        opts["classes"] = names if len(names) == len(classes) and task == "multiclass" else [str(c) for c in classes]
    elif task == "multi_output":
        opts["outputs"] = signature.output_names
    return opts


#: The joblib flavours that take one library's models only, and what they take.
_NATIVE = {"lightgbm": "an LGBMModel or a lightgbm.Booster",
           "xgboost": "an xgboost XGBClassifier or XGBRegressor",
           "catboost": "a catboost CatBoostClassifier or CatBoostRegressor"}


class JoblibFlavor(Flavor):
    extension = "joblib"

    def __init__(self, name: str) -> None:
        self.name = name

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        import joblib

        if not (hasattr(model, "predict_proba") or hasattr(model, "predict")):
            raise InputError("model", f"flavor {self.name!r} needs an object with predict_proba or predict",
                             type(model).__name__)
        if self.name in _NATIVE and not type(model).__module__.startswith(self.name):
            raise InputError("model", f"flavor {self.name!r} needs {_NATIVE[self.name]}", type(model).__name__)
        buf = io.BytesIO()
        joblib.dump(model, buf, compress=3)
        return buf.getvalue()

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        import joblib

        model = joblib.load(io.BytesIO(data))
        if threads is not None and self.name in ("lightgbm", "xgboost") and hasattr(model, "set_params"):
            model.set_params(n_jobs=threads)
        score = _score_function(model)
        opts = task_options(model, signature)
        if self.name == "xgboost" and opts["task"] == "multiclass" and hasattr(model, "get_booster"):
            named = model.get_booster().attr("modelmill_classes")  # the trainer's labels (XGBoost's are 0..K-1)
            if named and len(json.loads(named)) == len(opts["classes"]) and opts["classes"] != signature.output_names:
                opts["classes"] = json.loads(named)
        if not any(f.dtype == "string" for f in signature.inputs):
            return score, model, opts
        return _frame_predict(score, signature), model, {**opts, "categories": categories(model, signature)}


def _frame_predict(score: Predict, signature: Signature) -> Predict:
    """``score`` fed a pandas DataFrame named and typed as the signature: a model with string columns
    (a pipeline whose ColumnTransformer picks columns by name) is called with the frame it was fitted on."""
    import pandas as pd

    names = signature.input_names
    kinds = [f.dtype for f in signature.inputs]

    def predict(X: np.ndarray) -> np.ndarray:
        cols: dict[str, Any] = {}
        for j, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            col = X[:, j]
            if kind == "string":
                cols[name] = np.asarray(col, dtype=object)
            elif kind == "bool":
                cols[name] = np.asarray(col, dtype=np.float64) != 0
            else:
                cols[name] = np.asarray(col, dtype=kind if kind in ("float32", "float64") else np.float64)
        return score(pd.DataFrame(cols, copy=False))
    return predict


def categories(model: Any, signature: Signature) -> dict[str, list[str]]:
    """The categories a fitted pipeline knows for each string column of the signature: those of the
    OneHotEncoder or OrdinalEncoder its ColumnTransformer applies to that column (empty when none)."""
    wanted = {f.name for f in signature.inputs if f.dtype == "string"}
    found: dict[str, list[str]] = {}
    stack = [model]
    while stack:
        est = stack.pop()
        steps = getattr(est, "steps", None)
        if isinstance(steps, list):  # a Pipeline
            stack.extend(step for _, step in steps)
        for _, trans, cols in getattr(est, "transformers_", None) or ():  # a ColumnTransformer
            if isinstance(trans, str):
                continue
            encoder = trans
            inner = getattr(trans, "steps", None)
            if isinstance(inner, list):
                encoder = next((s for _, s in inner if hasattr(s, "categories_")), trans)
            cats = getattr(encoder, "categories_", None)
            if cats is None or isinstance(cols, slice) or not hasattr(cols, "__len__"):
                continue
            for col, values in zip(cols, cats, strict=False):
                if isinstance(col, str) and col in wanted:
                    found[col] = [str(v) for v in values]
    return found


# ---- PyTorch --------------------------------------------------------------------------------------

# What a torch model's last layer emits: logits get a sigmoid (or softmax for two columns).
TORCH_OUTPUTS = ("logit", "probability", "value")


class TorchFlavor(Flavor):
    """state_dict plus the importable class and its init kwargs; TorchScript when the class is not importable.

    Options: ``output`` (``logit`` default, ``probability`` or ``value``), ``init_kwargs`` (else the
    module's own ``init_kwargs`` attribute), ``format`` (``state_dict`` or ``torchscript``).
    """

    name = "torch"
    extension = "pt"

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        import torch

        opts = dict(options or {})
        output = opts.get("output", getattr(model, "modelmill_output", "logit"))
        if output not in TORCH_OUTPUTS:
            raise InputError("options.output", f"must be one of {', '.join(TORCH_OUTPUTS)}", output)
        if not isinstance(model, torch.nn.Module):
            raise InputError("model", "flavor 'torch' needs a torch.nn.Module", type(model).__name__)
        kwargs = opts.get("init_kwargs", getattr(model, "init_kwargs", None))
        fmt = opts.get("format") or ("state_dict" if _importable(model) and kwargs is not None else "torchscript")
        meta = {"output": output, "format": fmt}
        buf = io.BytesIO()
        if fmt == "state_dict":
            if kwargs is None or not _importable(model):
                raise InputError("options.format", "'state_dict' needs an importable module class and "
                                 "init_kwargs (option or attribute); use format='torchscript'",
                                 type(model).__qualname__)
            cls = type(model)
            torch.save({"meta": meta, "class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": dict(kwargs),
                        "state_dict": model.state_dict()}, buf)
        elif fmt == "torchscript":
            script = model if isinstance(model, torch.jit.ScriptModule) else _to_torchscript(model, signature)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # deprecated, yet the portable form
                torch.jit.save(script, buf, _extra_files={"modelmill.json": json.dumps(meta)})
        else:
            raise InputError("options.format", "must be 'state_dict' or 'torchscript'", fmt)
        return buf.getvalue()

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        import torch

        if _is_torchscript(data):
            extra = {"modelmill.json": ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(data), _extra_files=extra, map_location="cpu")
            meta = json.loads(extra["modelmill.json"] or "{}")
        else:
            bundle = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            mod_name, qual = str(bundle["class"]).split(":", 1)
            cls: Any = importlib.import_module(mod_name)
            for part in qual.split("."):
                cls = getattr(cls, part)
            module = cls(**bundle["kwargs"])
            module.load_state_dict(bundle["state_dict"])
            meta = bundle["meta"]
        module.eval()
        return torch_predict(module, str(meta.get("output", "logit"))), module, meta


def torch_predict(module: Any, output: str) -> Predict:
    """The scoring function of a torch module whose last layer emits ``output``."""
    import torch

    def predict(X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        with torch.inference_mode():
            out = module(x).reshape(len(X), -1)
            if out.shape[1] == 2:
                out = torch.softmax(out, dim=1)[:, 1] if output == "logit" else out[:, 1]
            else:
                out = out[:, -1]
                if output == "logit":
                    out = torch.sigmoid(out)
        return out.double().numpy()
    return predict


def _importable(model: Any) -> bool:
    cls = type(model)
    if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        return False
    try:
        found: Any = importlib.import_module(cls.__module__)
        for part in cls.__qualname__.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is cls


def _to_torchscript(model: Any, signature: Signature) -> Any:
    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated and chatty, yet still the portable form
        try:
            return torch.jit.script(model)
        except Exception:
            example = torch.zeros(2, len(signature.inputs))
            return torch.jit.trace(model, example)


def _is_torchscript(data: bytes) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            # torch.save archives hold data.pkl only; TorchScript archives also hold the compiled code/.
            return any("/code/" in n for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


# ---- ONNX -----------------------------------------------------------------------------------------


class OnnxFlavor(Flavor):
    """An ONNX graph run by onnxruntime; ``threads`` sets intra-op threads (1 for serving), ``[registry]
    onnx_providers`` the execution providers (CUDA, TensorRT) to try before the CPU."""

    name = "onnx"
    extension = "onnx"
    takes_providers = True

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        if isinstance(model, bytes | bytearray):
            data = bytes(model)
        elif hasattr(model, "SerializeToString"):
            data = model.SerializeToString()
        else:
            raise InputError("model", "flavor 'onnx' needs an onnx.ModelProto or its serialized bytes",
                             type(model).__name__)
        import onnx

        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:
            raise InputError("model", f"is not a valid ONNX model ({exc})") from exc
        width = _onnx_width(proto)
        if width is not None and width != len(signature.inputs):
            raise InputError("signature.inputs", f"has {len(signature.inputs)} fields but the ONNX graph's "
                             f"input has {width} columns")
        return data

    def _load(self, data: bytes, signature: Signature, *, threads: int | None,
              providers: Sequence[str] | None = None) -> tuple[Predict, Any, dict[str, Any]]:
        predict, session = onnx_predict(data, threads=threads, providers=providers)
        opts: dict[str, Any] = {"threads": threads, "providers": list(session.get_providers())}
        width = _probability_width(session)
        if width is not None and width > 2:  # a multiclass classifier: every class's probability, [n, C]
            names = signature.output_names
            opts |= {"task": "multiclass",
                     "classes": names if len(names) == width else (_onnx_classes(data) or [str(i) for i in range(width)])}
        return predict, session, opts


#: The short names ``[registry] onnx_providers`` takes, beside onnxruntime's own provider names.
ONNX_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


def onnx_providers(wanted: Sequence[str] | None) -> list[str]:
    """The execution providers to ask onnxruntime for: ``wanted`` (short or full names) that this onnxruntime
    has, in order, then the CPU. A wanted provider it lacks is logged with the reason, and left out: the model
    still serves, on the CPU. None or empty: the CPU alone."""
    import onnxruntime as ort

    if not wanted:
        return ["CPUExecutionProvider"]
    if isinstance(wanted, str) or not all(isinstance(w, str) for w in wanted):
        raise ConfigError("registry.onnx_providers", wanted, 'a list of provider names, e.g. ["cuda", "cpu"]')
    known = set(ONNX_PROVIDERS.values()) | set(ort.get_all_providers())
    names = [ONNX_PROVIDERS.get(w.lower(), w) for w in wanted]
    unknown = [w for w, n in zip(wanted, names, strict=True) if n not in known]
    if unknown:
        raise ConfigError("registry.onnx_providers", list(wanted),
                          f"names onnxruntime knows ({', '.join(ONNX_PROVIDERS)}, or e.g. CUDAExecutionProvider); "
                          f"unknown: {', '.join(unknown)}")
    available = set(ort.get_available_providers())
    chosen = []
    for n in names:
        if n in available:
            chosen.append(n)
        else:
            log.warning("onnxruntime %s has no %s (it has %s): the model runs on the CPU instead", ort.__version__,
                        n, ", ".join(sorted(available)))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return list(dict.fromkeys(chosen))


def onnx_predict(data: bytes, *, threads: int | None = None, providers: Sequence[str] | None = None
                 ) -> tuple[Predict, Any]:
    """An onnxruntime session for ``data`` (on ``providers``, see :func:`onnx_providers`) and its scoring
    function."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    asked = onnx_providers(providers)
    session = ort.InferenceSession(data, sess_options=opts, providers=asked)
    ran = session.get_providers()
    missed = [p for p in asked if p not in ran]
    if missed:  # e.g. a CUDA build of onnxruntime on a machine without a GPU: the session fell back
        log.warning("onnxruntime could not start %s for this model (its session runs on %s)", ", ".join(missed),
                    ", ".join(ran))
    inp = session.get_inputs()[0]
    in_name = inp.name
    in_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    outs = session.get_outputs()
    chosen = next((o for o in outs if o.name in _PROBABILITY_OUTPUTS), None)
    if chosen is None:
        floats = [o for o in outs if o.type in ("tensor(float)", "tensor(double)")]
        chosen = floats[-1] if floats else outs[0]
    out_names = [chosen.name]
    run = session.run
    width = _probability_width(session)
    if width is not None and width > 2:  # multiclass: [n, C], as the native flavours serve it
        def predict_classes(X: np.ndarray) -> np.ndarray:
            y = np.asarray(run(out_names, {in_name: np.ascontiguousarray(X, dtype=in_dtype)})[0])
            return y.reshape(len(X), -1).astype(np.float64)
        return predict_classes, session

    def predict(X: np.ndarray) -> np.ndarray:
        y = np.asarray(run(out_names, {in_name: np.ascontiguousarray(X, dtype=in_dtype)})[0])
        y = y.reshape(len(X), -1)
        return (y[:, 1] if y.shape[1] == 2 else y[:, -1]).astype(np.float64)
    return predict, session


_PROBABILITY_OUTPUTS = ("probabilities", "probability", "output_probability")


def _probability_width(session: Any) -> int | None:
    """The class count of the graph's probability output (``[n, C]`` with C fixed), or None (no such output,
    or its width is not fixed in the graph)."""
    chosen = next((o for o in session.get_outputs() if o.name in _PROBABILITY_OUTPUTS), None)
    shape = list(getattr(chosen, "shape", None) or [])
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def _onnx_classes(data: bytes) -> list[str] | None:
    """The class labels an ONNX classifier names in its order of outputs: the ``modelmill_classes`` metadata
    :func:`~modelmill.registry.export_onnx` writes (the native model's labels), else the classifier node's
    ``classlabels_*`` attribute; None when neither is there."""
    import onnx

    proto = onnx.load_from_string(data)
    for prop in proto.metadata_props:
        if prop.key == "modelmill_classes":
            return [str(c) for c in json.loads(prop.value)]
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_ints", "classlabels_int64s") and attr.ints:
                return [str(v) for v in attr.ints]
            if attr.name == "classlabels_strings" and attr.strings:
                return [v.decode() for v in attr.strings]
    return None


def _onnx_width(proto: Any) -> int | None:
    try:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) if len(dims) == 2 and dims[1].dim_value > 0 else None
    except (IndexError, AttributeError):
        return None


#: Every flavour by name. ``python`` joins when :mod:`modelmill.registry.python_flavor` is imported, which the
#: package's ``__init__`` does before any of its modules is used (it builds on :class:`Flavor`, so this module
#: does not import it: no import circle).
FLAVORS: dict[str, Flavor] = {
    "catboost": JoblibFlavor("catboost"),
    "lightgbm": JoblibFlavor("lightgbm"),
    "onnx": OnnxFlavor(),
    "sklearn": JoblibFlavor("sklearn"),
    "torch": TorchFlavor(),
    "xgboost": JoblibFlavor("xgboost"),
}


def flavor(name: str) -> Flavor:
    """The flavor called ``name``; :class:`InputError` listing the accepted names otherwise."""
    try:
        return FLAVORS[name]
    except (KeyError, TypeError):
        raise InputError("flavor", f"must be one of {', '.join(sorted(FLAVORS))}", name) from None
