from __future__ import annotations

import inspect

from modelmill import errors


def test_every_error_derives_from_the_base_and_is_documented() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, errors.ModelmillError)
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree at the top"
        assert cls.__name__ in errors.__all__


def test_errors_carry_context_and_render_as_json() -> None:
    err = errors.InputError("features.temp", "must be a number", "hot")
    assert err.field == "features.temp" and err.value == "hot"
    assert err.to_dict() == {"error": "features.temp: must be a number (got hot)", "type": "InputError",
                             "field": "features.temp", "problem": "must be a number", "value": "hot"}
    miss = errors.NotFoundError("model", "churn", "register it first")
    assert str(miss) == "model 'churn' not found; register it first"
