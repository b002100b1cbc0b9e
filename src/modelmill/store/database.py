"""The metadata database: SQLAlchemy 2 Core over SQLite or PostgreSQL, Alembic migrations.

    >>> import tempfile, pathlib
    >>> db = Database(f"sqlite:///{tempfile.mkdtemp()}/m.db").open()
    >>> db.upgrade()
    >>> db.schema_version() == db.code_heads()
    True
    >>> db.close()
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from modelmill.config import mask_url, sqlalchemy_url
from modelmill.errors import BackendUnavailable, StoreError

__all__ = ["Database"]

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every process migrating one database.
_PG_MIGRATION_LOCK = 0x6D6F64656C6D696C


class Database:
    """A handle on the metadata database. The constructor does no I/O; ``open()`` connects."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = sqlalchemy_url(url)
        self.pool_size = pool_size
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"Database({mask_url(self.url)!r})"

    @property
    def dialect(self) -> str:
        return self.url.split(":", 1)[0].split("+", 1)[0]

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError("the database is not open; call Database.open() first", url=mask_url(self.url))
        return self._engine

    def open(self) -> Database:
        """Create the engine (idempotent). Raises :class:`BackendUnavailable` if the server does not answer."""
        if self._engine is not None:
            return self
        if self.dialect == "sqlite":
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(
                self.url,
                pool_size=self.pool_size,
                pool_pre_ping=True,  # a restarted server is reconnected to transparently
                connect_args={"connect_timeout": 5},
            )
        self._engine = engine
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            self.close()
            raise BackendUnavailable("database", mask_url(self.url), _first_line(exc)) from exc
        return self

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside a transaction, committed on success."""
        with self.engine.begin() as conn:
            yield conn

    # ---- migrations -------------------------------------------------------------------------

    def _alembic(self, conn: Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self) -> None:
        """Apply every migration head. Safe to call from many processes at once."""
        from alembic import command

        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            if self._current(conn) == self.code_heads():
                return
            command.upgrade(self._alembic(conn), "heads")

    def code_heads(self) -> set[str]:
        """The newest revision of every migration branch shipped with this code."""
        return set(ScriptDirectory(str(MIGRATIONS)).get_heads())

    def _current(self, conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    def schema_version(self) -> set[str]:
        """The revisions the database is at (empty for a fresh database)."""
        with self.engine.connect() as conn:
            return self._current(conn)

    def ensure_schema(self) -> Database:
        """Open and upgrade when the schema is behind the code; cheap when it is current."""
        self.open()
        if self.schema_version() != self.code_heads():
            self.upgrade()
        return self

    # ---- helpers shared by every stage ------------------------------------------------------

    def audit(self, conn: Connection, *, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        """Append one line to the audit trail inside the caller's transaction."""
        from modelmill.store.tables import audit_log

        conn.execute(
            audit_log.insert().values(at=time.time(), actor=actor, action=action, subject=subject, detail=detail)
        )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
