"""Settings: one value object read from ``modelmill.toml`` and ``MODELMILL_*`` variables.

The file is searched upward from the working directory, like ``pyproject.toml``;
environment variables win over the file. Backends are chosen by URL::

    >>> s = Settings.defaults(home="/tmp/mm")
    >>> s.db
    'sqlite:////tmp/mm/modelmill.db'
    >>> Settings.defaults(home="/tmp/mm").replace(online="redis://127.0.0.1:6379/0").online
    'redis://127.0.0.1:6379/0'
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelmill.errors import ConfigError

__all__ = ["CONFIG_FILE", "Settings", "find_config_file", "load_settings", "mask_url"]

CONFIG_FILE = "modelmill.toml"
BACKEND_KEYS = ("db", "online", "cache", "broker", "artifacts", "offline")

# Accepted URL schemes per backend key, with the sentence shown when a value is wrong.
_ACCEPTED: dict[str, tuple[tuple[str, ...], str]] = {
    "db": (("sqlite", "postgresql", "postgresql+psycopg", "postgres"),
           "'sqlite:///PATH' or 'postgresql://USER[:PASSWORD]@HOST[:PORT]/DB'"),
    "online": (("sqlite", "redis", "rediss"), "'sqlite:///PATH' or 'redis://HOST:PORT/DB'"),
    "cache": (("memory", "redis", "rediss", "none"), "'memory://' (in-process LRU), 'none://' or 'redis://HOST:PORT/DB'"),
    "broker": (("local", "nats", "redis", "rediss", "kafka"),
               "'local:///PATH' (append-only log), 'nats://HOST:PORT', 'redis://HOST:PORT/DB' or 'kafka://HOST:PORT'"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Where modelmill keeps things. Every field is a URL or a path; see ``modelmill init``."""

    home: Path
    db: str
    online: str
    cache: str
    broker: str
    artifacts: str
    offline: str
    source: Path | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def defaults(cls, *, home: str | os.PathLike[str] = ".modelmill") -> Settings:
        """The embedded defaults: everything in files under ``home``, no servers."""
        h = Path(home).expanduser().absolute()
        return cls(
            home=h,
            db=f"sqlite:///{h / 'modelmill.db'}",
            online=f"sqlite:///{h / 'online.db'}",
            cache="memory://",
            broker=f"local:///{h / 'log'}",
            artifacts=str(h / "artifacts"),
            offline=str(h / "offline"),
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first malformed setting."""
        for key, (schemes, accepted) in _ACCEPTED.items():
            value = getattr(self, key)
            scheme = urlsplit(value).scheme if isinstance(value, str) else ""
            if scheme not in schemes:
                raise ConfigError(key, value, accepted)
        for key in ("artifacts", "offline"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ConfigError(key, value, "a folder path or an fsspec URL such as 's3://bucket/prefix'")
            scheme = urlsplit(value).scheme
            if scheme and len(scheme) > 1:  # one letter is a Windows drive
                import fsspec

                if scheme not in fsspec.available_protocols():
                    raise ConfigError(key, value, "a folder path or an fsspec URL with a known protocol")

    def section(self, name: str) -> Mapping[str, Any]:
        """A stage's own table from ``modelmill.toml`` (``[monitoring]``, ``[serving]`` …)."""
        value = self.extra.get(name, {})
        return value if isinstance(value, Mapping) else {}

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL for ``db``, with the psycopg 3 driver named for PostgreSQL."""
        return sqlalchemy_url(self.db)

    def as_dict(self, *, masked: bool = True) -> dict[str, str]:
        out = {"home": str(self.home)}
        for key in BACKEND_KEYS:
            value = getattr(self, key)
            out[key] = mask_url(value) if masked else value
        return out


def sqlalchemy_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def mask_url(url: str) -> str:
    """Hide the password of a URL: ``redis://:secret@h`` becomes ``redis://:***@h``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def find_config_file(start: Path | None = None) -> Path | None:
    """The nearest ``modelmill.toml`` at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def load_settings(*, cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Read settings: defaults, then ``modelmill.toml``, then ``MODELMILL_*``, then ``overrides``.

    A relative ``home`` in the file is relative to the file's folder; in the
    environment it is relative to the working directory.
    """
    env = os.environ if env is None else env
    base = (Path(cwd) if cwd is not None else Path.cwd()).absolute()
    path = find_config_file(base)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "(unparseable)", f"valid TOML ({exc})") from exc
    backends = data.get("backends", {})
    if not isinstance(backends, dict):
        raise ConfigError("backends", backends, "a TOML table [backends]")
    unknown = set(backends) - set(BACKEND_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"backends.{key}", backends[key], f"one of the keys {', '.join(BACKEND_KEYS)}")

    root = path.parent if path else base
    home_value = env.get("MODELMILL_HOME") or overrides.pop("home", None) or data.get("home") or ".modelmill"
    home = Path(str(home_value)).expanduser()
    if not home.is_absolute():
        home = (base if "MODELMILL_HOME" in env else root) / home
    settings = Settings.defaults(home=home)

    values: dict[str, Any] = {}
    for key in BACKEND_KEYS:
        value = overrides.get(key) or env.get(f"MODELMILL_{key.upper()}") or backends.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(key, value, "a string URL")
            values[key] = value
    extra = {k: v for k, v in data.items() if k not in ("home", "backends")}
    settings = dataclasses.replace(settings, source=path, extra=extra, **values)
    settings.validate()
    return settings
