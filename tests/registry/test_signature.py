"""Signatures: JSON round trip, inference from a DataFrame, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest

from modelmill.errors import InputError
from modelmill.registry import Field, Signature, infer_signature


def test_json_round_trip() -> None:
    sig = Signature(inputs=[Field("a", "float32"), ("b", "int64"), {"name": "c", "dtype": "bool"}],
                    outputs=[Field("probability")])
    again = Signature.from_json(sig.to_json())
    assert again == sig and again.input_names == ["a", "b", "c"]
    assert isinstance(again.inputs, list) and again.inputs[1] == Field("b", "int64")


def test_inferred_from_a_frame() -> None:
    df = pd.DataFrame({"dist": [1.0], "hour": pd.Series([3], dtype="int32"), "carrier": ["UA"],
                       "wet": [True], "late": [0]})
    sig = infer_signature(df, exclude=["late"])
    assert [(f.name, f.dtype) for f in sig.inputs] == [
        ("dist", "float64"), ("hour", "int32"), ("carrier", "string"), ("wet", "bool")]
    assert Signature.from_frame(df, exclude=["late"]) == sig


@pytest.mark.parametrize(("build", "field"), [
    (lambda: Signature(inputs=[]), "signature.inputs"),
    (lambda: Signature(inputs=[Field("a", "complex")]), "signature.field[a].dtype"),
    (lambda: Signature(inputs=[Field("a"), Field("a")]), "signature.inputs"),
    (lambda: Signature.from_json("{"), "signature"),
])
def test_bad_signatures_name_the_field(build, field: str) -> None:
    with pytest.raises(InputError) as info:
        build()
    assert info.value.field == field
