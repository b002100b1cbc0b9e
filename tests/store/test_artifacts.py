from __future__ import annotations

from pathlib import Path

import pytest

from modelmill.errors import ArtifactIntegrityError, NotFoundError, UnsafePathError
from modelmill.store import ArtifactStore, Database, safe_path


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}").ensure_schema()
    return ArtifactStore(str(tmp_path / "art"), db)


def test_round_trip_records_sha256(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put_bytes("models/churn/1/model.joblib", b"\x00weights" * 1000)
    assert ref.size == 8000 and len(ref.sha256) == 64
    assert store.ref("models/churn/1/model.joblib") == ref
    assert store.get_bytes("models/churn/1/model.joblib") == b"\x00weights" * 1000
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 10_000)
    ref2 = store.put_file("data/big.bin", src)
    out = store.get_file("data/big.bin", tmp_path / "copy.bin")
    assert out.read_bytes() == src.read_bytes() and ref2.size == 2_560_000


def test_one_changed_byte_refuses_to_load(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("m/model.bin", b"abcdefgh")
    path = tmp_path / "art" / "m" / "model.bin"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        store.get_bytes("m/model.bin")
    assert "tampered" in str(info.value) and info.value.path.endswith("m/model.bin")


def test_missing_record_and_missing_file(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        store.get_bytes("never/written")
    store.put_bytes("gone.bin", b"x")
    (tmp_path / "art" / "gone.bin").unlink()
    with pytest.raises(NotFoundError, match="file"):
        store.get_bytes("gone.bin")


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "a/../../b", "a/..", "", "a\\b", "C:/x", "a\x00b"])
def test_paths_that_escape_the_store_are_rejected(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_path(bad)
    with pytest.raises(UnsafePathError):
        store.put_bytes(bad, b"x")


def test_fsspec_memory_url_works_too(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}").ensure_schema()
    store = ArtifactStore("memory://mm-test-artifacts", db)
    store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello" and store.exists("a/b.txt")
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
