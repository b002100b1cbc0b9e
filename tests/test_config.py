from __future__ import annotations

from pathlib import Path

import pytest

from modelmill.config import Settings, load_settings, mask_url
from modelmill.errors import ConfigError


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = load_settings(cwd=tmp_path, env={})
    assert s.home == tmp_path / ".modelmill"
    assert s.db == f"sqlite:///{tmp_path / '.modelmill' / 'modelmill.db'}"
    assert s.online.startswith("sqlite:///") and s.cache == "memory://"
    assert s.broker.startswith("local:///") and s.source is None


def test_file_is_found_upward_and_env_wins(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text(
        'home = "state"\n[backends]\nonline = "redis://127.0.0.1:6379/3"\nbroker = "nats://127.0.0.1:4222"\n'
        '[monitoring]\ninterval = 5\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    s = load_settings(cwd=sub, env={"MODELMILL_BROKER": "redis://127.0.0.1:6379/1"})
    assert s.source == tmp_path / "modelmill.toml"
    assert s.home == tmp_path / "state"  # relative to the file, not the working directory
    assert s.online == "redis://127.0.0.1:6379/3"
    assert s.broker == "redis://127.0.0.1:6379/1"
    assert s.section("monitoring") == {"interval": 5}
    assert s.section("absent") == {}


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("db", "mysql://root@localhost/x", "postgresql://"),
        ("online", "memcached://x", "redis://"),
        ("cache", "sqlite:///x", "memory://"),
        ("broker", "amqp://x", "nats://"),
        ("artifacts", "nosuchproto://bucket/x", "fsspec"),
    ],
)
def test_bad_setting_names_key_value_and_accepted_forms(tmp_path: Path, key: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(cwd=tmp_path, env={f"MODELMILL_{key.upper()}": value})
    err = info.value
    assert err.key == key and err.value == value
    assert accepted in str(err) and value in str(err)


def test_unknown_backend_key_in_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text('[backends]\ndatabase = "sqlite:///x"\n')
    with pytest.raises(ConfigError, match=r"backends\.database"):
        load_settings(cwd=tmp_path, env={})


def test_unparseable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text("home = [unclosed\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(cwd=tmp_path, env={})


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_settings_repr_and_equality() -> None:
    a = Settings.defaults(home="/tmp/x")
    assert a == Settings.defaults(home="/tmp/x")
    assert "online=" in repr(a)
    with pytest.raises(ConfigError):
        a.replace(db="oracle://x")
