"""The artifact store: bytes under any fsspec URL, each with a sha256 checked on every read.

On an object store (``s3://bucket/prefix``) an artifact is one object, uploaded whole (a reader never sees
half of one); the endpoint and credentials are configured as for the offline store
(docs/howto/object-storage.md).

The digest is recorded in the metadata database, not beside the file, so
whoever can change the file cannot also change what it is checked against.

    >>> import tempfile
    >>> from modelmill.store.database import Database
    >>> tmp = tempfile.mkdtemp()
    >>> db = Database(f"sqlite:///{tmp}/m.db").ensure_schema()
    >>> store = ArtifactStore(f"{tmp}/art", db)
    >>> ref = store.put_bytes("models/a/model.bin", b"weights")
    >>> store.get_bytes("models/a/model.bin")
    b'weights'
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import time
from pathlib import Path

import fsspec
import sqlalchemy as sa

from modelmill.errors import ArtifactIntegrityError, NotFoundError, UnsafePathError
from modelmill.store.database import Database
from modelmill.store.offline import check_object_store, is_object_store, open_filesystem
from modelmill.store.tables import artifacts

__all__ = ["ArtifactRef", "ArtifactStore", "safe_path"]

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArtifactRef:
    path: str
    sha256: str
    size: int


def safe_path(path: str) -> str:
    """Normalise a relative artifact path; refuse one that is absolute or climbs out with '..'."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise UnsafePathError(str(path))
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(path)
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(path)
    norm = posixpath.normpath(path)
    if norm in ("", ".") or norm.startswith(".."):
        raise UnsafePathError(path)
    return norm


class ArtifactStore:
    """Artifacts under ``url`` (a folder or an fsspec URL) with digests kept in ``db``."""

    def __init__(self, url: str, db: Database) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root = ""

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            fs, root = open_filesystem(self.url, key="artifacts")
            self._fs, self._root = fs, root
        return self._fs

    def check(self, *, key: str = "artifacts", write: bool = False) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless the store answers (and, with ``write``, takes a file)."""
        _ = self.fs
        check_object_store(self.fs, self._root, self.url, key=key, write=write)

    def _makedirs(self, full: str) -> None:
        # An object store has no folders (and s3fs's makedirs would create a missing bucket).
        if not is_object_store(self.fs):
            self.fs.makedirs(posixpath.dirname(full), exist_ok=True)

    def _full(self, path: str) -> str:
        _ = self.fs
        return f"{self._root}/{safe_path(path)}"

    def uri(self, path: str) -> str:
        """The full URL of an artifact, for lineage records."""
        return f"{self.url}/{safe_path(path)}"

    def put_bytes(self, path: str, data: bytes) -> ArtifactRef:
        full = self._full(path)
        self._makedirs(full)
        with self.fs.open(full, "wb") as fh:
            fh.write(data)
        return self._record(safe_path(path), hashlib.sha256(data).hexdigest(), len(data))

    def put_file(self, path: str, local: str | Path) -> ArtifactRef:
        """Copy a local file into the store, hashing it as it streams."""
        full = self._full(path)
        self._makedirs(full)
        digest, size = hashlib.sha256(), 0
        with open(local, "rb") as src, self.fs.open(full, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
        return self._record(safe_path(path), digest.hexdigest(), size)

    def _record(self, path: str, sha: str, size: int) -> ArtifactRef:
        row = {"path": path, "sha256": sha, "size": size, "created_at": time.time()}
        with self.db.begin() as conn:
            conn.execute(artifacts.delete().where(artifacts.c.path == path))
            conn.execute(artifacts.insert().values(**row))
        return ArtifactRef(path=path, sha256=sha, size=size)

    def ref(self, path: str) -> ArtifactRef:
        """The recorded digest and size; :class:`NotFoundError` if it was never written here."""
        path = safe_path(path)
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(artifacts).where(artifacts.c.path == path)).first()
        if row is None:
            raise NotFoundError("artifact", path, "it was never written through this artifact store")
        return ArtifactRef(path=row.path, sha256=row.sha256, size=row.size)

    def get_bytes(self, path: str, *, sha256: str | None = None) -> bytes:
        """The artifact's bytes, verified against the recorded (or the given) sha256."""
        expected = sha256 or self.ref(path).sha256
        full = self._full(path)
        if not self.fs.exists(full):
            raise NotFoundError("artifact file", self.uri(path), "the record exists but the file is gone")
        with self.fs.open(full, "rb") as fh:
            data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactIntegrityError(self.uri(path), expected, actual)
        return data

    def get_file(self, path: str, dest: str | Path, *, sha256: str | None = None) -> Path:
        """Copy the artifact to ``dest`` after verifying it; returns ``dest``."""
        data = self.get_bytes(path, sha256=sha256)
        out = Path(dest)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return out

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._full(path)))

    def delete(self, path: str) -> None:
        full = self._full(path)
        if self.fs.exists(full):
            self.fs.rm(full)
        with self.db.begin() as conn:
            conn.execute(artifacts.delete().where(artifacts.c.path == safe_path(path)))
