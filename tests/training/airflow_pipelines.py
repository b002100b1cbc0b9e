"""A pipeline the Airflow test exports and runs: a diamond (``source`` feeds ``total`` and ``spread``,
which both feed ``report``) that records lineage and logs to its tracking run."""

from __future__ import annotations

import os

from modelmill.training import Pipeline, StepContext, step


def _count(name: str) -> None:
    path = os.environ.get("MM_TEST_COUNTER")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name}\n")


@step(inputs=["n", "seed"], outputs=["rows"])
def source(n: int, seed: int, ctx: StepContext) -> list[int]:
    _count("source")
    ctx.record(data_snapshot=f"synthetic:n={n}:seed={seed}")
    return [(i * 7919 + seed) % 101 for i in range(n)]


@step(inputs=["rows"], outputs=["total"])
def total(rows: list[int]) -> int:
    _count("total")
    return sum(rows)


@step(inputs=["rows"], outputs=["spread"], retries=1, backoff=0)
def spread(rows: list[int], ctx: StepContext) -> int:
    _count("spread")
    value = max(rows) - min(rows)
    ctx.run.log_metric("spread", value)
    ctx.record(training_set=f"rows-{len(rows)}")
    return value


@step(inputs=["total", "spread"], outputs=["report"], timeout=600)
def report(total: int, spread: int) -> str:
    _count("report")
    return f"total={total} spread={spread}"


diamond = Pipeline("af-diamond", [source, total, spread, report])
