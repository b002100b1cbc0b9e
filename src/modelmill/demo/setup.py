"""The demo's project: a ``modelmill.toml`` in the working folder, fresh state under its home."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from modelmill.config import CONFIG_FILE, Settings, load_settings

__all__ = ["prepare_project"]

TOML = '''\
# Written by `modelmill demo`. `modelmill serve` in this folder serves the demo's production model.
home = "{home}"

[backends]
{backends}
[features]
# The demo replays 2013: online reads are judged at the newest event time seen, not the wall clock.
clock = "event"

[serving]
models = ["{model}@production"]
{loop}'''


def prepare_project(folder: Path, *, model: str, fresh: bool = True, loop: str = "", **backends: str | None) -> Settings:
    """Write the demo's configuration into ``folder`` and clear what an earlier demo run left.

    With the embedded metadata database everything under the home folder is removed. With a
    server database (PostgreSQL) the registry keeps its history, so the offline store and
    local log get a folder of their own per run instead (ingestion's exactly-once index is
    kept per offline root).
    """
    home = folder / ".modelmill"
    chosen = {k: v for k, v in backends.items() if v}
    base = load_settings(cwd=folder, env={}, home=str(home), **chosen)
    if fresh:
        if base.db.startswith("sqlite"):
            shutil.rmtree(home, ignore_errors=True)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            chosen.setdefault("offline", str(home / "runs" / stamp / "offline"))
            if base.broker.startswith("local"):
                chosen.setdefault("broker", f"local:///{home / 'runs' / stamp / 'log'}")
            if base.online.startswith("sqlite"):
                (home / "online.db").unlink(missing_ok=True)
        _clear_online(base.online)
        _clear_streams(chosen.get("broker") or base.broker)
    lines = "".join(f'{k} = "{v}"\n' for k, v in chosen.items())
    (folder / CONFIG_FILE).write_text(TOML.format(home=".modelmill", backends=lines, model=model, loop=loop))
    return load_settings(cwd=folder)


STREAMS = ("weather", "flights", "arrivals")


def _clear_streams(url: str) -> None:
    """Delete the demo's streams on a server broker: a durable consumer of an earlier run would otherwise
    hand this run that run's unconsumed events (from months ahead)."""
    scheme = url.split("://", 1)[0]
    if scheme == "nats":
        from modelmill.ingest.jetstream import delete_stream

        for stream in STREAMS:
            delete_stream(url, stream)
    elif scheme == "kafka":
        from modelmill.ingest.kafka import delete_topic

        for stream in STREAMS:
            delete_topic(url, stream)
    elif scheme in ("redis", "rediss"):
        from modelmill.store import open_kv

        kv = open_kv(url)
        try:
            kv.delete(*STREAMS)
        finally:
            kv.close()


def _clear_online(url: str) -> None:
    """Remove feature values, aggregates and the event clock a previous run left in a Redis online store."""
    if not url.startswith(("redis://", "rediss://")):
        return
    from modelmill.store import open_kv

    kv = open_kv(url)
    try:
        keys = list(kv.scan("mm:"))
        for i in range(0, len(keys), 1000):
            kv.delete(*keys[i:i + 1000])
    finally:
        kv.close()
