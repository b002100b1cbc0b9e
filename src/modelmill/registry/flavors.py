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
``torch``     ``nn.Module`` (or a TorchScript module)     state_dict + class, else TorchScript
``onnx``      ``onnx.ModelProto`` or its bytes            ONNX protobuf (onnxruntime session)
============  ==========================================  ==================================

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
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelmill.errors import InputError
from modelmill.registry.signature import Signature

__all__ = ["FLAVORS", "Flavor", "LoadedModel", "flavor"]

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

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        raise NotImplementedError

    def load(self, data: bytes, signature: Signature, *, name: str, version: int, sha256: str,
             threads: int | None = None) -> LoadedModel:
        predict, raw, options = self._load(data, signature, threads=threads)
        return LoadedModel(name=name, version=version, flavor=self.name, signature=signature, sha256=sha256,
                           predict=predict, raw=raw, options=options)

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        raise NotImplementedError


# ---- scikit-learn and LightGBM: joblib ------------------------------------------------------------


def _score_function(model: Any) -> Predict:
    """predict_proba[:, 1] for a binary classifier, predict for anything else."""
    if getattr(model, "feature_names_in_", None) is not None or hasattr(model, "feature_name_"):
        # Fitted on a DataFrame, called with the signature-ordered matrix: the warning is noise here.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
    proba = getattr(model, "predict_proba", None)
    if proba is not None and len(getattr(model, "classes_", (0, 1))) == 2:
        def predict(X: np.ndarray) -> np.ndarray:
            return np.asarray(proba(X), dtype=np.float64)[:, 1]
        return predict
    plain = model.predict

    def predict_plain(X: np.ndarray) -> np.ndarray:
        return np.asarray(plain(X), dtype=np.float64).reshape(len(X), -1)[:, -1]
    return predict_plain


class JoblibFlavor(Flavor):
    extension = "joblib"

    def __init__(self, name: str) -> None:
        self.name = name

    def dump(self, model: Any, signature: Signature, options: Mapping[str, Any] | None = None) -> bytes:
        import joblib

        if not (hasattr(model, "predict_proba") or hasattr(model, "predict")):
            raise InputError("model", f"flavor {self.name!r} needs an object with predict_proba or predict",
                             type(model).__name__)
        if self.name == "lightgbm" and not type(model).__module__.startswith("lightgbm"):
            raise InputError("model", "flavor 'lightgbm' needs an LGBMModel or a lightgbm.Booster",
                             type(model).__name__)
        buf = io.BytesIO()
        joblib.dump(model, buf, compress=3)
        return buf.getvalue()

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        import joblib

        model = joblib.load(io.BytesIO(data))
        if threads is not None and self.name == "lightgbm" and hasattr(model, "set_params"):
            model.set_params(n_jobs=threads)
        return _score_function(model), model, {}


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
    """An ONNX graph run by onnxruntime on the CPU; ``threads`` sets intra-op threads (1 for serving)."""

    name = "onnx"
    extension = "onnx"

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

    def _load(self, data: bytes, signature: Signature, *, threads: int | None
              ) -> tuple[Predict, Any, dict[str, Any]]:
        predict, session = onnx_predict(data, threads=threads)
        return predict, session, {"threads": threads}


def onnx_predict(data: bytes, *, threads: int | None = None) -> tuple[Predict, Any]:
    """An onnxruntime session for ``data`` and its scoring function."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    in_name = inp.name
    in_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    outs = session.get_outputs()
    chosen = next((o for o in outs if o.name in ("probabilities", "probability", "output_probability")), None)
    if chosen is None:
        floats = [o for o in outs if o.type in ("tensor(float)", "tensor(double)")]
        chosen = floats[-1] if floats else outs[0]
    out_names = [chosen.name]
    run = session.run

    def predict(X: np.ndarray) -> np.ndarray:
        y = np.asarray(run(out_names, {in_name: np.ascontiguousarray(X, dtype=in_dtype)})[0])
        y = y.reshape(len(X), -1)
        return (y[:, 1] if y.shape[1] == 2 else y[:, -1]).astype(np.float64)
    return predict, session


def _onnx_width(proto: Any) -> int | None:
    try:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) if len(dims) == 2 and dims[1].dim_value > 0 else None
    except (IndexError, AttributeError):
        return None


FLAVORS: dict[str, Flavor] = {
    "lightgbm": JoblibFlavor("lightgbm"),
    "onnx": OnnxFlavor(),
    "sklearn": JoblibFlavor("sklearn"),
    "torch": TorchFlavor(),
}


def flavor(name: str) -> Flavor:
    """The flavor called ``name``; :class:`InputError` listing the accepted names otherwise."""
    try:
        return FLAVORS[name]
    except (KeyError, TypeError):
        raise InputError("flavor", f"must be one of {', '.join(sorted(FLAVORS))}", name) from None
