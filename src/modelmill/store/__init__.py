"""Persistence shared by every stage: metadata database, artifacts, key-value stores, the feedback path."""

from __future__ import annotations

from modelmill.store.artifacts import ArtifactRef, ArtifactStore, safe_path
from modelmill.store.database import Database
from modelmill.store.feedback import Feedback, LabelCounts, write_labels
from modelmill.store.kv import KeyValue, MemoryKV, RedisKV, SQLiteKV, open_kv
from modelmill.store.offline import OfflineStore

__all__ = [
    "ArtifactRef",
    "ArtifactStore",
    "Database",
    "Feedback",
    "KeyValue",
    "LabelCounts",
    "MemoryKV",
    "OfflineStore",
    "RedisKV",
    "SQLiteKV",
    "open_kv",
    "safe_path",
    "write_labels",
]
