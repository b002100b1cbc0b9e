"""One ingestor of a consumer group, as its own process (the scale-out tests start several and SIGKILL one).

    python -m tests.ingest.scaleout_consumer SPEC_JSON

SPEC: home, url, stream, group, consumer, idle (s), options (source options), share (Kafka, Kinesis: wait until
the group assigned this many partitions before ingesting), marks (a folder: after each committed micro-batch
the processor appends one line ``{"rows": N, "entities": [...]}`` to ``<marks>/<consumer>.jsonl``), and
aggregates (fold the batches into the project's stream aggregations too).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from modelmill.config import Settings
from modelmill.ingest import Ingestor, open_source
from modelmill.project import Project
from tests.ingest.conftest import CLICKS


class Marks:
    """After each committed batch (before its ack): how many rows and which users this consumer wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def process(self, stream: str, batch: pa.Table) -> None:
        users = sorted({str(u) for u in batch.column("user").to_pylist()})
        with self.path.open("ab") as f:
            f.write(orjson.dumps({"rows": batch.num_rows, "entities": users}) + b"\n")


def main(spec: dict[str, Any]) -> None:
    settings = Settings.defaults(home=spec["home"])
    if spec.get("db"):
        settings = settings.replace(db=spec["db"])
    with Project(settings) as project:
        source = open_source(spec["url"], stream=spec["stream"], group=spec["group"], consumer=spec["consumer"],
                             **spec.get("options", {}))
        marks = Path(spec["marks"])
        processors: list[Any] = []
        features = None
        if spec.get("aggregates"):
            from modelmill.features import FeatureStore

            features = FeatureStore(project)
            processors.append(features.stream_processor())
        processors.append(Marks(marks / f"{spec['consumer']}.jsonl"))
        share = spec.get("share")
        if share:
            # Join the group on an empty topic and wait until it gave this member its share of partitions:
            # the test publishes only when every member holds one.
            source.open()
            deadline = time.monotonic() + 90
            while len(source.assignment()) != share:  # type: ignore[attr-defined]
                assert not source.poll(10, 0.2).payloads, "the topic was not empty while the group formed"
                if time.monotonic() > deadline:
                    raise SystemExit(f"{spec['consumer']}: no share of {share} partitions after 90 s")
        (marks / f"{spec['consumer']}.ready").write_text("ready")
        Ingestor(project, CLICKS, source, processors=processors, batch_size=spec.get("batch_size", 2_000),
                 batch_seconds=0.3, poll_size=500).run(idle_timeout=spec["idle"])
        if features is not None:
            features.close()


if __name__ == "__main__":
    main(orjson.loads(sys.argv[1]))
