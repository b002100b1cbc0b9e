"""The hooks through which code keeps data of its own in a key-value backend (the stream aggregates):
SQLite's connection and transaction, Redis's script and pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelmill.errors import BackendUnavailable
from modelmill.store import RedisKV, SQLiteKV


def test_sqlite_transaction_commits_at_the_end_and_rolls_back_on_error(tmp_path: Path) -> None:
    kv = SQLiteKV(tmp_path / "kv.db")
    with kv.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS mine (x INTEGER)")
        conn.execute("INSERT INTO mine VALUES (1)")
    with pytest.raises(RuntimeError), kv.transaction() as conn:
        conn.execute("INSERT INTO mine VALUES (2)")
        kv.connection().execute("INSERT INTO mine VALUES (3)")  # the same connection: in the transaction
        raise RuntimeError("boom")
    other = SQLiteKV(tmp_path / "kv.db")  # another connection sees only what was committed
    assert other.connection().execute("SELECT x FROM mine").fetchall() == [(1,)]
    assert not kv.connection().in_transaction
    kv.set("k", b"v")  # the key-value table shares the file and the connection
    assert other.get("k") == b"v"
    kv.close()
    other.close()


def test_redis_script_and_pipeline_run_under_the_prefix_holders_keys(redis_url: str, redis_prefix: str) -> None:
    kv = RedisKV(redis_url, prefix=redis_prefix)
    incr_both = kv.script("return {redis.call('INCRBY', KEYS[1], ARGV[1]), redis.call('INCRBY', KEYS[2], ARGV[1])}")
    a, b = f"{kv.prefix}a", f"{kv.prefix}b"
    assert incr_both([a, b], [5]) == [5, 5]
    assert incr_both([a, b], [2]) == [7, 7]
    assert kv.pipeline(lambda pipe: (pipe.get(a), pipe.get("never-set-" + b))) == [b"7", None]
    assert kv.get("a") == b"7"  # the script's keys are the store's own keys
    kv.close()
    assert incr_both([a, b], [1]) == [8, 8]  # a closed store reconnects, and the script with it
    kv.close()


def test_redis_hooks_go_through_the_breaker() -> None:
    kv = RedisKV("redis://127.0.0.1:1/0", socket_timeout=0.5, failures=1, retry_after_s=60)
    with pytest.raises(BackendUnavailable):
        kv.script("return 1")([], [])
    with pytest.raises(BackendUnavailable, match="refused"):  # the breaker is open: refused without a call
        kv.pipeline(lambda pipe: pipe.get("x"))
    kv.close()
