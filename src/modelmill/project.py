"""A project: the settings plus the opened backends, created lazily and shared by every stage.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> p.online.set("k", b"v"); p.online.get("k")
    b'v'
    >>> p.close()
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from modelmill.config import Settings, load_settings
from modelmill.store import ArtifactStore, Database, KeyValue, OfflineStore, open_kv

__all__ = ["Project", "open_project"]


class Project:
    """Everything a stage needs to persist, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"Project(home={str(self.settings.home)!r})"

    @cached_property
    def db(self) -> Database:
        """The metadata database, migrated to the code's schema."""
        return Database(self.settings.db).ensure_schema()

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts, self.db)

    @cached_property
    def online(self) -> KeyValue:
        return open_kv(self.settings.online, table="online")

    @cached_property
    def cache(self) -> KeyValue | None:
        """The prediction cache, or None when ``cache = "none://"``."""
        if self.settings.cache.startswith("none:"):
            return None
        return open_kv(self.settings.cache, prefix="mm:cache:", table="cache")

    @cached_property
    def offline(self) -> OfflineStore:
        """The offline (Parquet) store: ingested events, prediction logs, labels."""
        root = self.settings.offline
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
        return OfflineStore(root)

    def close(self) -> None:
        for name in ("online", "cache"):
            kv = self.__dict__.get(name)
            if kv is not None:
                kv.close()
        db = self.__dict__.get("db")
        if db is not None:
            db.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_project(**overrides: str | None) -> Project:
    """The project of the working directory (``modelmill.toml`` + ``MODELMILL_*`` + overrides).

    ``overrides`` are backend URLs by key (``db=...``, ``online=...``); ``None`` values are ignored.
    """
    given: dict[str, Any] = {k: v for k, v in overrides.items() if v}
    return Project(load_settings(**given))
