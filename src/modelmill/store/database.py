"""The metadata database: SQLAlchemy 2 Core over SQLite or PostgreSQL, Alembic migrations.

A damaged database is a :class:`StoreError` that says what is wrong and what to do, never a driver
traceback: a corrupt or zero-length SQLite file, a schema revision this code does not know (written by a
newer modelmill), a table or column that is gone, or a stored value that is not JSON. ``check()`` lists
every such problem for ``modelmill doctor``.

    >>> import tempfile, pathlib
    >>> db = Database(f"sqlite:///{tempfile.mkdtemp()}/m.db").open()
    >>> db.upgrade()
    >>> db.schema_version() == db.code_heads()
    True
    >>> db.close()
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
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
from modelmill.store.tables import metadata

__all__ = ["Database"]

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every process migrating one database.
_PG_MIGRATION_LOCK = 0x6D6F64656C6D696C
# What a damaged-database error tells the user to do.
_RESTORE = ("run 'modelmill doctor' to list every problem, then restore the database from a backup "
            "(or, to start over empty, move it away and run 'modelmill db upgrade')")


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
            path = self.url.split(":///", 1)[1].split("?", 1)[0] if ":///" in self.url else ""
            if path and path != ":memory:" and not path.startswith("file:"):
                self._prepare_sqlite_file(Path(path))
            # A stored value that is not JSON (only SQLite can hold one) becomes a StoreError naming it.
            engine = sa.create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False},
                                      json_deserializer=self._load_json)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(
                self.url,
                pool_size=self.pool_size,
                pool_pre_ping=True,  # a restarted server is reconnected to transparently
                connect_args={"connect_timeout": 5},
            )
        event.listen(engine, "handle_error", self._translate_error)
        self._engine = engine
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except StoreError:
            self.close()
            raise
        except sa.exc.OperationalError as exc:
            self.close()
            raise BackendUnavailable("database", mask_url(self.url), _first_line(exc)) from exc
        except sa.exc.DatabaseError as exc:  # e.g. "file is not a database", "database disk image is malformed"
            self.close()
            raise self._damaged(_first_line(exc)) from exc
        return self

    def _prepare_sqlite_file(self, path: Path) -> None:
        """Refuse a zero-length file; create a missing one whole, so that no process ever sees it empty.

        SQLite treats a zero-length file as a new, empty database, so a database truncated to nothing (a full
        disk, a bad copy) would silently come back with no models, tokens or routes. Only a missing file
        starts a new database: it is written aside and hard-linked into place (atomic, never overwrites).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = None
        if size == 0:
            raise StoreError(
                f"the metadata database {str(path)!r} is an empty (zero-length) file, not a database; restore it "
                "from a backup, or delete it and run 'modelmill db upgrade' to start a new, empty one",
                backend="database", url=mask_url(self.url), reason="zero-length file", path=str(path))
        if size is not None:
            return
        fresh = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
        try:
            conn = sqlite3.connect(fresh)
            conn.execute("PRAGMA journal_mode=WAL")  # writes the header: the file is a database from now on
            conn.close()
            try:
                os.link(fresh, path)
            except FileExistsError:
                pass  # another process created it first; use theirs
            except OSError:
                # No hard links on this filesystem: let SQLite create it in place, as before.
                pass
        finally:
            fresh.unlink(missing_ok=True)

    def _damaged(self, reason: str) -> StoreError:
        return StoreError(f"the metadata database at {mask_url(self.url)} is damaged: {reason}; {_RESTORE}",
                          backend="database", url=mask_url(self.url), reason=reason)

    def _translate_error(self, context: sa.engine.ExceptionContext) -> BaseException | None:
        """Turn a driver error that means "this database is damaged" into one clear StoreError, and a server
        that went away (refused connection, cut connection) into :class:`BackendUnavailable`.

        Other errors (a lock timeout, a constraint the caller catches) pass unchanged. The pool's pre-ping is
        left alone: its failure is how a restarted server is reconnected to transparently.
        """
        reason = _damage(context.original_exception)
        if reason is not None:
            return self._damaged(reason)
        if self.dialect != "sqlite" and not context.is_pre_ping and (
                context.is_disconnect or (context.connection is None
                                          and isinstance(context.sqlalchemy_exception, sa.exc.OperationalError))):
            return BackendUnavailable("database", mask_url(self.url), _first_line(context.original_exception))
        return None

    def _load_json(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:39] + "…"
            raise self._damaged(f"a stored value is not JSON ({shown!r})") from None

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

    def upgrade(self) -> None:
        """Apply every migration head. Safe to call from many processes at once."""
        from alembic import command

        with self.engine.begin() as conn:
            self._lock_for_migration(conn)
            current = self._current(conn)
            if current == self.code_heads():
                return
            self._refuse_unknown(current)
            command.upgrade(_alembic(conn), "heads")

    def downgrade(self, target: str = "base") -> None:
        """Run the migrations' ``downgrade()`` back to ``target`` (default: no tables at all).

        Every row in the tables it drops is lost: take a backup first.
        """
        from alembic import command

        with self.engine.begin() as conn:
            self._lock_for_migration(conn)
            self._refuse_unknown(self._current(conn))
            command.downgrade(_alembic(conn), target)

    def _lock_for_migration(self, conn: Connection) -> None:
        """One migrating process at a time; the others wait, then find the schema current."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        elif self.dialect == "sqlite":
            # The write lock before the version is read: otherwise two processes both see an empty schema
            # and the second fails with "table ... already exists".
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def code_heads(self) -> set[str]:
        """The newest revision of every migration branch shipped with this code."""
        return set(_scripts().get_heads())

    def _refuse_unknown(self, current: set[str]) -> None:
        """A revision the code has never heard of was written by a newer modelmill: never migrate over it."""
        unknown = sorted(current - _known_revisions())
        if unknown:
            raise StoreError(
                f"the metadata database at {mask_url(self.url)} is at schema revision {', '.join(unknown)}, "
                "which this version of modelmill does not know (a newer modelmill migrated it); upgrade "
                "modelmill, or point MODELMILL_DB at another database",
                backend="database", url=mask_url(self.url), reason="unknown schema revision", revisions=unknown)

    def _current(self, conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    def schema_version(self) -> set[str]:
        """The revisions the database is at (empty for a fresh database)."""
        with self.engine.connect() as conn:
            return self._current(conn)

    def ensure_schema(self) -> Database:
        """Open and upgrade when the schema is behind the code, then check that every table is there.

        Cheap when the schema is current (two small queries). Raises :class:`StoreError` for a revision
        from a newer modelmill or a missing table.
        """
        self.open()
        current = self.schema_version()
        if current != self.code_heads():
            self._refuse_unknown(current)
            self.upgrade()
        with self.engine.connect() as conn:
            missing = sorted(set(metadata.tables) - set(sa.inspect(conn).get_table_names()))
        if missing:
            raise self._damaged(f"table{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing")
        return self

    def check(self) -> list[str]:
        """Every problem with the schema and the stored data, for ``modelmill doctor``; empty when healthy.

        A schema that is merely behind the code is no problem (every command upgrades it); an unknown
        revision, a table or column that the database's own revisions should have created but that is
        missing, a failed SQLite integrity check and (on SQLite, which does not type its JSON columns) a
        stored value that is not JSON are.
        """
        problems: list[str] = []
        with self.engine.connect() as conn:
            current = self._current(conn)
            unknown = sorted(current - _known_revisions())
            if unknown:
                problems.append(f"schema revision {', '.join(unknown)} is unknown to this modelmill "
                                "(migrated by a newer one)")
            if self.dialect == "sqlite":
                verdict = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check").all()]
                if verdict != ["ok"]:
                    problems.append(f"integrity check failed: {'; '.join(verdict[:3])}")
            if unknown:
                return problems  # the tables belong to a schema this code cannot describe
            inspector = sa.inspect(conn)
            have = {name: {c["name"] for c in inspector.get_columns(name)} for name in inspector.get_table_names()}
            for name, columns in sorted(_schema_at(frozenset(current)).items()):
                if name not in have:
                    problems.append(f"table {name} is missing")
                    continue
                gone = sorted(columns - have[name])
                if gone:
                    problems.append(f"table {name} lacks column{'s' if len(gone) > 1 else ''} {', '.join(gone)}")
            if self.dialect == "sqlite":
                for table in metadata.sorted_tables:
                    problems += _invalid_json(conn, table, have.get(table.name, set()))
        return problems

    # ---- helpers shared by every stage ------------------------------------------------------

    def audit(self, conn: Connection, *, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        """Append one line to the audit trail inside the caller's transaction."""
        from modelmill.store.tables import audit_log

        conn.execute(
            audit_log.insert().values(at=time.time(), actor=actor, action=action, subject=subject, detail=detail)
        )


def _alembic(conn: Connection) -> Config:
    """Alembic's configuration, running on ``conn`` (see ``migrations/env.py``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def _known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


@cache
def _schema_at(revisions: frozenset[str]) -> dict[str, frozenset[str]]:
    """The tables and columns that the migrations up to ``revisions`` create, found by running them on a
    scratch in-memory SQLite database (exact, whatever each migration does, and about 0.1 s)."""
    from alembic import command

    scratch = sa.create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            cfg = _alembic(conn)
            for revision in sorted(revisions):
                command.upgrade(cfg, revision)
            inspector = sa.inspect(conn)
            return {name: frozenset(c["name"] for c in inspector.get_columns(name))
                    for name in inspector.get_table_names() if name != "alembic_version"}
    finally:
        scratch.dispose()


def _invalid_json(conn: Connection, table: sa.Table, present: set[str]) -> list[str]:
    out = []
    for column in table.columns:
        if isinstance(column.type, sa.JSON) and column.name in present:
            bad = conn.execute(sa.select(sa.func.count()).select_from(table).where(
                column.is_not(None), sa.func.json_valid(sa.cast(column, sa.Text)) == 0)).scalar_one()
            if bad:
                out.append(f"table {table.name}: {bad} value{'s' if bad > 1 else ''} of {column.name} "
                           "not JSON")
    return out


def _damage(exc: BaseException) -> str | None:
    """What a driver error says about the database's state, when it says it is damaged; else None."""
    text = _first_line(exc)
    if type(exc) is sqlite3.DatabaseError:  # subclasses (locked, constraint, ...) are not damage
        return text
    if isinstance(exc, sqlite3.OperationalError) and text.startswith(("no such table", "no such column")):
        return text
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate in ("42P01", "42703", "XX001", "XX002"):  # undefined table, column; data, index corrupted
        return text
    return None


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
