"""The consumer the crash test starts and SIGKILLs: ingests a NATS stream into a project, then exits."""

from __future__ import annotations

import os
import signal
import sys

from modelmill.config import Settings
from modelmill.ingest import Ingestor, open_source
from modelmill.project import Project
from tests.ingest.conftest import CLICKS


class DieAfterCommit:
    """A processor (called after a batch is committed, before it is acked) that SIGKILLs its process."""

    def process(self, stream: str, batch: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def main(home: str, url: str, stream: str, group: str, idle: float, die_after_commit: bool = False) -> None:
    with Project(Settings.defaults(home=home)) as project:
        source = open_source(url, stream=stream, group=group, ack_wait=2.0)
        processors = [DieAfterCommit()] if die_after_commit else []
        Ingestor(project, CLICKS, source, processors=processors, batch_size=20_000,
                 batch_seconds=0.5).run(idle_timeout=idle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6:] == ["die-after-commit"])
