"""Run search filters, written as MLflow writes them: ``metrics.auc > 0.7 and params.max_depth = 6``.

A filter is clauses joined by ``and`` (``or`` is not supported, as in MLflow). A clause is
``ENTITY.KEY COMPARATOR VALUE``:

- ``metrics.KEY`` (also ``metric.``): the metric's last value (highest step), compared with a number
  by ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``;
- ``params.KEY`` and ``tags.KEY`` (also ``param.``, ``tag.``): strings, compared with a quoted
  string by ``=``, ``!=``, ``LIKE`` and ``ILIKE`` (``%`` any characters, ``_`` one; ``ILIKE``
  ignores case), as in MLflow. An unquoted number compares values that read as numbers by any
  comparator: ``params.max_depth = 6`` matches ``"6"`` and ``"6.0"``, ``params.lr < 0.1`` works;
- ``attributes.NAME`` (also ``attribute.``, ``attr.``, ``run.``): ``run_id``, ``run_name`` (or ``name``),
  ``status``, ``experiment``, ``git_commit``, ``data_snapshot``, ``feature_version`` as strings, and
  ``start_time``, ``end_time`` as numbers in milliseconds since the epoch (MLflow's unit).
  ``status`` ignores case (``'FINISHED'`` is ``finished``).

Keys with spaces or other characters are quoted with backticks or double quotes
(see the second example below); string values with single or double quotes. A run without the key
never matches (``!=`` included). Any other input is an :class:`~modelmill.errors.InputError`
that names the token and where it stands.

    >>> [str(c) for c in parse_filter("metrics.auc > 0.7 and params.max_depth = 6")]
    ['metrics.auc > 0.7', 'params.max_depth = 6']
    >>> [str(c) for c in parse_filter("tags.`data set` ILIKE '%flights%' AND attributes.status = 'FINISHED'")]
    ["tags.`data set` ILIKE '%flights%'", "attributes.status = 'finished'"]
    >>> parse_filter("metrics.auc >> 0.7")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: filter: unknown comparator '>>' at character 13; use =, !=, <, <=, >, >=, LIKE or ILIKE (got >>)
    >>> parse_filter("metrics.auc > 0.7 or metrics.auc < 0.2")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: filter: 'or' at character 19 is not supported (as in MLflow): join clauses with 'and', or run two searches (got or)
    >>> [str(k) for k in parse_order_by(["metrics.auc DESC", "attributes.start_time"])]
    ['metrics.auc DESC', 'attributes.start_time ASC']
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from modelmill.errors import InputError

__all__ = ["ATTRIBUTES", "Clause", "OrderKey", "match", "parse_filter", "parse_order_by", "sort_runs"]

COMPARATORS = ("=", "!=", "<", "<=", ">", ">=", "LIKE", "ILIKE")
NUMERIC_COMPARATORS = ("=", "!=", "<", "<=", ">", ">=")
STRING_COMPARATORS = ("=", "!=", "LIKE", "ILIKE")
_ENTITIES = {"metric": "metrics", "metrics": "metrics", "param": "params", "params": "params",
             "parameter": "params", "parameters": "params", "tag": "tags", "tags": "tags",
             "attribute": "attributes", "attributes": "attributes", "attr": "attributes", "run": "attributes"}
# Attribute name -> the RunInfo field it reads; start and end time are compared in milliseconds.
ATTRIBUTES = {"run_id": "run_id", "run_name": "name", "name": "name", "status": "status",
              "experiment": "experiment", "git_commit": "git_commit", "data_snapshot": "data_snapshot",
              "feature_version": "feature_version", "start_time": "start_time", "end_time": "end_time"}
_TIME_ATTRIBUTES = ("start_time", "end_time")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![^\s=!<>'"`]))
  | (?P<ident>[A-Za-z_][\w]*\.(?:`[^`]*`|"[^"]*"|[\w.\-/:]+))
  | (?P<word>[A-Za-z_]\w*(?![^\s=!<>'"`]))
  | (?P<op>[=!<>]+|[^\s\w'"`])
  | (?P<bare>[^\s'"`]+)
""", re.VERBOSE)


@dataclasses.dataclass(frozen=True)
class Clause:
    """One ``ENTITY.KEY COMPARATOR VALUE`` clause; ``value`` is a float or a string."""

    entity: str
    key: str
    comparator: str
    value: float | str

    def __str__(self) -> str:
        key = self.key if re.fullmatch(r"[\w.\-/:]+", self.key) else f"`{self.key}`"
        shown = _number_text(self.value) if isinstance(self.value, float) else "'" + self.value.replace("'", "''") + "'"
        return f"{self.entity}.{key} {self.comparator} {shown}"

    def matches(self, run: Any) -> bool:
        """Whether ``run`` (a :class:`~modelmill.training.tracking.RunInfo`) satisfies the clause."""
        actual = _lookup(run, self.entity, self.key)
        if actual is None:
            return False
        if isinstance(self.value, float):
            number = _as_number(actual)
            if number is None or math.isnan(number):
                return False
            return _compare(number, self.comparator, self.value)
        text = str(actual)
        if self.entity == "attributes" and self.key == "status":
            text = text.lower()
        if self.comparator == "LIKE":
            return _like(self.value).fullmatch(text) is not None
        if self.comparator == "ILIKE":
            return _like(self.value, re.IGNORECASE).fullmatch(text) is not None
        return (text == self.value) is (self.comparator == "=")


@dataclasses.dataclass(frozen=True)
class OrderKey:
    """One ``--order-by`` key: ``ENTITY.KEY [ASC|DESC]``."""

    entity: str
    key: str
    ascending: bool = True

    def __str__(self) -> str:
        return f"{self.entity}.{self.key} {'ASC' if self.ascending else 'DESC'}"


def parse_filter(text: str | None) -> list[Clause]:
    """The clauses of a filter string (empty: every run); an :class:`InputError` names a bad token."""
    if text is None or not text.strip():
        return []
    if len(text) > 10_000:
        raise InputError("filter", "is longer than 10,000 characters", text[:40] + "...")
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while True:
        if i >= len(tokens):
            raise InputError("filter", "ends after 'and'; give another clause or drop the 'and'", text)
        clause, i = _clause(tokens, i, text)
        clauses.append(clause)
        if i == len(tokens):
            return clauses
        kind, value, pos = tokens[i]
        if kind == "word" and value.lower() == "and":
            i += 1
            continue
        if kind == "word" and value.lower() == "or":
            raise InputError("filter", f"'or' at character {pos + 1} is not supported (as in MLflow): join clauses "
                             "with 'and', or run two searches", value)
        raise InputError("filter", f"expected 'and' at character {pos + 1} after the clause '{clause}'", value)


def parse_order_by(items: Iterable[str]) -> list[OrderKey]:
    """``["metrics.auc DESC", "attributes.start_time"]`` -> order keys (ascending unless ``DESC``)."""
    out = []
    for item in items:
        tokens = _tokens(item, field="order_by")
        if not tokens or tokens[0][0] != "ident":
            raise InputError("order_by", "must look like 'metrics.auc DESC' (an entity.key, then ASC or DESC)", item)
        entity, key = _split(tokens[0][1], tokens[0][2], field="order_by")
        ascending = True
        if len(tokens) > 2 or (len(tokens) == 2 and tokens[1][1].upper() not in ("ASC", "DESC")):
            bad = tokens[1][1] if tokens[1][1].upper() not in ("ASC", "DESC") else tokens[2][1]
            raise InputError("order_by", f"expected ASC or DESC after {tokens[0][1]} in {item!r}", bad)
        if len(tokens) == 2:
            ascending = tokens[1][1].upper() == "ASC"
        out.append(OrderKey(entity, key, ascending))
    return out


def match(runs: Iterable[Any], clauses: Sequence[Clause]) -> list[Any]:
    """The runs that satisfy every clause, in their order."""
    return [r for r in runs if all(c.matches(r) for c in clauses)]


def sort_runs(runs: Sequence[Any], keys: Sequence[OrderKey]) -> list[Any]:
    """Runs ordered by ``keys``, then newest first, then by id (MLflow's default order). A run without a
    key's value comes after those with one, either way; params compare as numbers when every value given
    reads as a number, as strings otherwise."""
    out = sorted(runs, key=lambda r: r.run_id)
    out.sort(key=lambda r: r.start_time, reverse=True)
    for key in reversed(keys):
        values = [_lookup(r, key.entity, key.key) for r in out]
        numeric = key.entity == "metrics" or key.key in _TIME_ATTRIBUTES or all(
            _as_number(v) is not None for v in values if v is not None)
        convert: Callable[[Any], Any] = _as_number if numeric else str
        converted = [None if v is None else convert(v) for v in values]
        present = [(c, r) for c, r in zip(converted, out, strict=True) if c is not None and c == c]  # not NaN
        absent = [r for c, r in zip(converted, out, strict=True) if c is None or c != c]
        present.sort(key=lambda pair: pair[0], reverse=not key.ascending)
        out = [r for _, r in present] + absent
    return out


# ---- parsing ------------------------------------------------------------------------------------


def _tokens(text: str, *, field: str = "filter") -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:  # an unclosed quote or backtick
            raise InputError(field, f"cannot read {text[pos:pos + 20]!r} at character {pos + 1}: close the quote "
                                    "or backtick", text[pos:pos + 20])
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group(), pos))
        pos = m.end()
    return out


def _split(ident: str, pos: int, *, field: str) -> tuple[str, str]:
    prefix, _, key = ident.partition(".")
    entity = _ENTITIES.get(prefix.lower())
    if entity is None:
        raise InputError(field, f"unknown entity {prefix!r} at character {pos + 1}; use metrics., params., "
                                "tags. or attributes.", ident)
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "`\"":
        key = key[1:-1]
    if not key:
        raise InputError(field, f"{ident!r} at character {pos + 1} names no key", ident)
    if entity == "attributes":
        if key not in ATTRIBUTES:
            raise InputError(field, f"unknown attribute {key!r} at character {pos + 1}; attributes are "
                                    f"{', '.join(ATTRIBUTES)}", ident)
        key = "run_name" if key == "name" else key
    return entity, key


def _clause(tokens: list[tuple[str, str, int]], i: int, text: str) -> tuple[Clause, int]:
    kind, ident, pos = tokens[i]
    if kind != "ident":
        raise InputError("filter", f"expected a key like metrics.auc or params.lr at character {pos + 1}, "
                                   f"found {ident!r}", ident)
    entity, key = _split(ident, pos, field="filter")
    if i + 1 >= len(tokens):
        raise InputError("filter", f"{ident} at character {pos + 1} has no comparator and value; "
                                   "write e.g. metrics.auc > 0.7", ident)
    kind, op, pos = tokens[i + 1]
    # LIKE / ILIKE arrive as words; "NOT LIKE" and "IN" are not in MLflow's run filter for these entities.
    comparator = op.upper() if kind == "word" else op
    if comparator not in COMPARATORS:
        raise InputError("filter", f"unknown comparator {op!r} at character {pos + 1}; use "
                                   f"{', '.join(COMPARATORS[:-2])}, LIKE or ILIKE", op)
    if i + 2 >= len(tokens):
        raise InputError("filter", f"no value after {ident} {comparator} (at character {pos + 1})", op)
    kind, raw, pos = tokens[i + 2]
    value: float | str
    if kind == "number":
        value = float(raw)
    elif kind == "string":
        value = raw[1:-1].replace(raw[0] * 2, raw[0])
    else:
        raise InputError("filter", f"value {raw!r} at character {pos + 1} is neither a number nor a quoted "
                                   f"string; write '{raw}' in quotes", raw)
    numeric = entity == "metrics" or key in _TIME_ATTRIBUTES
    if numeric:
        if comparator not in NUMERIC_COMPARATORS:
            raise InputError("filter", f"{comparator} at character {tokens[i + 1][2] + 1} compares strings; "
                                       f"{ident} is a number: use {', '.join(NUMERIC_COMPARATORS)}", op)
        if isinstance(value, str):
            number = _as_number(value)
            if number is None:
                what = "a metric" if entity == "metrics" else key
                raise InputError("filter", f"{ident} at character {tokens[i][2] + 1} is {what}, compared with "
                                           "numbers only", raw)
            value = number
    elif comparator in ("LIKE", "ILIKE"):
        if not isinstance(value, str):
            raise InputError("filter", f"{comparator} at character {tokens[i + 1][2] + 1} takes a quoted "
                                       f"pattern, like '%{raw}%'", raw)
    elif isinstance(value, str) and comparator not in STRING_COMPARATORS:
        raise InputError("filter", f"{comparator} at character {tokens[i + 1][2] + 1} compares numbers; "
                                   f"{raw} is a quoted string: use =, !=, LIKE or ILIKE, or an unquoted number",
                         op)
    if entity == "attributes" and key == "status" and isinstance(value, str) and comparator in ("=", "!="):
        value = value.lower()
    return Clause(entity, key, comparator, value), i + 3


# ---- evaluation ---------------------------------------------------------------------------------


def _lookup(run: Any, entity: str, key: str) -> Any:
    if entity == "metrics":
        summary = run.metrics.get(key)
        return None if summary is None else summary.get("last")
    if entity == "params":
        return run.params.get(key)
    if entity == "tags":
        return run.tags.get(key)
    value = getattr(run, ATTRIBUTES[key])
    if key in _TIME_ATTRIBUTES and value is not None:
        return float(value) * 1000.0
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _compare(a: float, op: str, b: float) -> bool:
    return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _like(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = (".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
