"""A model's signature: the input fields it reads, in order, and the outputs it writes.

Serving builds the feature vector in the order of ``inputs``; the registry
refuses an input matrix whose width does not match.

    >>> sig = Signature(inputs=[Field("distance", "float64"), Field("hour", "int64")],
    ...                 outputs=[Field("probability", "float64")])
    >>> Signature.from_json(sig.to_json()) == sig
    True
    >>> sig.input_names
    ['distance', 'hour']
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelmill.errors import InputError

__all__ = ["DTYPES", "Field", "Signature", "infer_signature"]

# The types a field may declare; numpy-style names so that they round-trip through Arrow and pandas.
DTYPES = ("bool", "float32", "float64", "int32", "int64", "string")


@dataclasses.dataclass(frozen=True)
class Field:
    """One named, typed column."""

    name: str
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError("signature.field.name", "must be a non-empty string", self.name)
        if self.dtype not in DTYPES:
            raise InputError(f"signature.field[{self.name}].dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class Signature:
    """Input and output fields of a model. ``inputs`` order is the column order of ``predict``."""

    inputs: list[Field]
    outputs: list[Field] = dataclasses.field(default_factory=lambda: [Field("probability", "float64")])

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _fields(self.inputs, "signature.inputs"))
        object.__setattr__(self, "outputs", _fields(self.outputs, "signature.outputs"))
        if not self.inputs:
            raise InputError("signature.inputs", "needs at least one field")
        for kind, fields in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [f.name for f in fields]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise InputError(f"signature.{kind}", "field names must be unique", dupes)

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.outputs]

    def to_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"inputs": [f.to_dict() for f in self.inputs], "outputs": [f.to_dict() for f in self.outputs]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        if not isinstance(data, Mapping) or "inputs" not in data:
            raise InputError("signature", "must be an object with 'inputs' (and optionally 'outputs')", data)
        outputs = data.get("outputs")
        return cls(
            inputs=[_field(f, "signature.inputs") for f in data["inputs"]],
            outputs=[_field(f, "signature.outputs") for f in outputs] if outputs is not None else
            [Field("probability", "float64")],
        )

    @classmethod
    def from_json(cls, text: str) -> Signature:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError("signature", f"is not valid JSON ({exc.msg})", text) from exc
        return cls.from_dict(data)

    @classmethod
    def from_frame(cls, frame: Any, *, exclude: Iterable[str] = (), outputs: Sequence[Field] | None = None
                   ) -> Signature:
        """Infer the signature from a pandas DataFrame's columns and dtypes (``exclude`` drops the label)."""
        return infer_signature(frame, exclude=exclude, outputs=outputs)


def infer_signature(frame: Any, *, exclude: Iterable[str] = (), outputs: Sequence[Field] | None = None
                    ) -> Signature:
    """A :class:`Signature` whose inputs are the DataFrame's columns, in order, with their dtypes.

        >>> import pandas as pd
        >>> df = pd.DataFrame({"a": [1.0], "b": [2], "label": [1]})
        >>> [(f.name, f.dtype) for f in infer_signature(df, exclude=["label"]).inputs]
        [('a', 'float64'), ('b', 'int64')]
    """
    skip = set(exclude)
    fields = [Field(str(col), _dtype_name(frame[col].dtype)) for col in frame.columns if col not in skip]
    return Signature(inputs=fields, outputs=list(outputs) if outputs else [Field("probability", "float64")])


def _dtype_name(dtype: Any) -> str:
    import numpy as np

    kind = getattr(dtype, "kind", "O")
    if kind == "b":
        return "bool"
    if kind == "f":
        return "float32" if np.dtype(dtype) == np.float32 else "float64"
    if kind in "iu":
        return "int32" if np.dtype(dtype).itemsize <= 4 and kind == "i" else "int64"
    return "string"


def _fields(values: Any, where: str) -> list[Field]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InputError(where, "must be a list of Field(name, dtype)", values)
    return [_field(v, where) for v in values]


def _field(value: Any, where: str) -> Field:
    if isinstance(value, Field):
        return value
    if isinstance(value, Mapping) and "name" in value:
        return Field(str(value["name"]), str(value.get("dtype", "float64")))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return Field(str(value[0]), str(value[1]))
    raise InputError(where, "each field must be Field(name, dtype), {'name', 'dtype'} or (name, dtype)", value)
