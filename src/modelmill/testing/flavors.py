"""The contract of model flavors: a model becomes bytes, the bytes load to ``predict(X) -> [n] float64``.

Serving never asks what a model is made of, so every flavor must load to the same interface and score as the
native model did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.registry import Field, LoadedModel, Registry, Signature
from modelmill.registry.flavors import FLAVORS, Flavor
from modelmill.registry.flavors import flavor as get_flavor
from modelmill.testing.base import expect, scratch_project

__all__ = ["check_flavor"]


def check_flavor(flavor: str | Flavor, model: Any, X: np.ndarray, expected: np.ndarray, *,
                 options: Mapping[str, Any] | None = None, project: Project | None = None,
                 rtol: float = 1e-6, atol: float = 1e-7) -> None:
    """Check that ``flavor`` stores ``model`` and loads it to scores equal to ``expected`` (the native model's
    scores of ``X``: the positive-class probability of a binary classifier, the value of a regressor).

    Asserts that ``dump`` gives bytes; that ``load`` gives a :class:`~modelmill.registry.LoadedModel` of that
    flavor whose ``predict`` returns ``[n]`` float64 equal to ``expected`` within ``rtol``/``atol``, takes one
    row as a 1-D array, and refuses a matrix of the wrong width with :class:`~modelmill.errors.InputError`;
    and that the flavor is registered (``modelmill.registry.flavors.FLAVORS``), so that
    ``Registry.register`` stores the model (``options`` go to the flavor) and ``Registry.load`` scores the
    same. The registry round
    trip runs in a scratch project unless ``project`` is given. Raises :class:`AssertionError` naming the
    broken promise.
    """
    fl = get_flavor(flavor) if isinstance(flavor, str) else flavor
    what = f"check_flavor({fl.name!r}, {type(model).__name__})"
    X = np.asarray(X, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64).ravel()
    expect(X.ndim == 2 and len(want) == len(X), f"{what}: X must be [n, k] and expected [n] (got {X.shape}, "
                                                f"{np.shape(expected)})")
    k = X.shape[1]
    sig = Signature(inputs=[Field(f"f{i}", "float64") for i in range(k)], outputs=[Field("score")])
    data = fl.dump(model, sig, options)
    expect(isinstance(data, bytes) and data, f"{what}: dump gave {type(data).__name__} of length "
                                             f"{len(data) if isinstance(data, bytes) else '?'}, want non-empty bytes")
    loaded = fl.load(data, sig, name="check", version=1, sha256="")
    _check_loaded(what + " loaded from its bytes", loaded, fl.name, X, want, rtol, atol)
    expect(FLAVORS.get(fl.name) is fl,
           f"{what}: the flavor is not modelmill.registry.flavors.FLAVORS[{fl.name!r}], so the registry cannot "
           "store or load it")
    with scratch_project(project) as proj:
        registry = Registry(proj)
        mv = registry.register("check-flavor", model, flavor=fl.name, signature=sig, options=options)
        _check_loaded(what + " through the registry", registry.load(mv, cache=False), fl.name, X, want, rtol, atol)


def _check_loaded(what: str, loaded: LoadedModel, name: str, X: np.ndarray, want: np.ndarray, rtol: float,
                  atol: float) -> None:
    expect(isinstance(loaded, LoadedModel), f"{what}: load gave {type(loaded).__name__}, not a LoadedModel")
    expect(loaded.flavor == name, f"{what}: the loaded model says flavor {loaded.flavor!r}")
    got = loaded.predict(X)
    expect(isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (len(X),),
           f"{what}: predict gave {type(got).__name__} {getattr(got, 'dtype', '')} {getattr(got, 'shape', '')}, "
           f"want float64 of shape ({len(X)},)")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        worst = int(np.argmax(np.abs(got - want)))
        raise AssertionError(f"{what}: scores differ from the native model's (row {worst}: {got[worst]!r} "
                             f"against {want[worst]!r}; rtol {rtol}, atol {atol})")
    one = loaded.predict(X[0])
    expect(np.allclose(one, want[:1], rtol=rtol, atol=atol), f"{what}: a single 1-D row scores {one}, not {want[:1]}")
    try:
        loaded.predict(np.zeros((2, X.shape[1] + 1)))
    except InputError:
        pass
    else:
        raise AssertionError(f"{what}: a matrix [2, {X.shape[1] + 1}] was scored, not refused with an InputError")
