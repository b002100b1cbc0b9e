"""The crash test's consumer (tests/ingest/crash_consumer.py) with its offline store on S3:
``python -m tests.ingest.crash_consumer_s3 HOME OFFLINE_URL NATS_URL STREAM GROUP IDLE [die-after-commit]``.
The endpoint and credentials come from the AWS_* variables, as in production."""

from __future__ import annotations

import sys

from modelmill.config import Settings
from modelmill.ingest import Ingestor, open_source
from modelmill.project import Project
from tests.ingest.conftest import CLICKS
from tests.ingest.crash_consumer import DieAfterCommit


def main(home: str, offline: str, url: str, stream: str, group: str, idle: float,
         die_after_commit: bool = False) -> None:
    with Project(Settings.defaults(home=home).replace(offline=offline)) as project:
        source = open_source(url, stream=stream, group=group, ack_wait=2.0)
        processors = [DieAfterCommit()] if die_after_commit else []
        Ingestor(project, CLICKS, source, processors=processors, batch_size=20_000,
                 batch_seconds=0.5).run(idle_timeout=idle)


if __name__ == "__main__":
    main(*sys.argv[1:6], float(sys.argv[6]), sys.argv[7:] == ["die-after-commit"])
