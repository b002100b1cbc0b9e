"""The contract kit: the checks modelmill's own backends pass, for anyone's backend to prove itself with one call.

As scikit-learn ships ``check_estimator``, modelmill ships one check per plug-in contract. The project's own
contract tests are built on these (``tests/store/test_kv.py`` runs :func:`check_kv` over SQLite, Redis and
the in-process LRU), so "passes the kit" and "works like the built-in backends" are the same claim.

=========================  ===================================================================================
check                      what it is given
=========================  ===================================================================================
:func:`check_source`       ``make_stream()``: a fresh stream with ``source(group, consumer)`` and ``publisher()``
:func:`check_publisher`    the same ``make_stream()``
:func:`check_kv`           ``make_kv()``: a new, empty :class:`~modelmill.store.KeyValue`
:func:`check_online_store` ``make_online()``: a new, empty key-value store for the online feature store
:func:`check_trainer`      a trainer instance (``name``, ``flavor``, ``fit``)
:func:`check_flavor`       a flavor, a model, a matrix ``X`` and the native model's scores of ``X``
=========================  ===================================================================================

Each check runs its named sub-checks in order (``checks=`` picks some: :data:`KV_CHECKS`,
:data:`SOURCE_CHECKS`, ...) and returns None; the first broken promise raises :class:`AssertionError` whose
message names the check, the sub-check, the promise and what was seen. Nothing here needs pytest, and every
wait is bounded (a TTL of one second, a broker's redelivery timer, drains of at most 30 s).

A third-party key-value backend proves itself in one call (here the in-process LRU stands in for it):

    >>> from modelmill.store import MemoryKV
    >>> from modelmill.testing import check_kv
    >>> check_kv(lambda: MemoryKV(max_items=10_000))

and a broken one is told which promise it broke:

    >>> class Forgetful(MemoryKV):
    ...     def mget(self, keys):
    ...         return [None for _ in keys]
    >>> check_kv(Forgetful, checks=["mget_keeps_order"])
    Traceback (most recent call last):
    ...
    AssertionError: check_kv[mget_keeps_order] broke its promise: mget answers in the order asked, ...
"""

from __future__ import annotations

from modelmill.testing.base import expect
from modelmill.testing.flavors import check_flavor
from modelmill.testing.kv import KV_CHECKS, check_kv, watch_expiry
from modelmill.testing.online import ONLINE_CHECKS, check_online_store
from modelmill.testing.sources import PUBLISHER_CHECKS, SOURCE_CHECKS, Stream, check_publisher, check_source
from modelmill.testing.trainers import Trainer, check_trainer

__all__ = [
    "KV_CHECKS",
    "ONLINE_CHECKS",
    "PUBLISHER_CHECKS",
    "SOURCE_CHECKS",
    "Stream",
    "Trainer",
    "check_flavor",
    "check_kv",
    "check_online_store",
    "check_publisher",
    "check_source",
    "check_trainer",
    "expect",
    "watch_expiry",
]
