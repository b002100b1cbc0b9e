"""The fleet how-to shows the HAProxy configuration the fleet tests run (not slow: no fleet is started)."""

from __future__ import annotations

from pathlib import Path

from tests.fleet.netfleet import HOST_PORT, haproxy_config

REPO = Path(__file__).resolve().parents[2]


def test_the_doc_shows_the_haproxy_configuration_the_fleet_runs() -> None:
    """docs/howto/fleet.md's example is haproxy_config's output for the servers it names, byte for byte."""
    doc = (REPO / "docs" / "howto" / "fleet.md").read_text()
    example = haproxy_config([("host1", f"10.0.0.11:{HOST_PORT}"), ("host2", f"10.0.0.12:{HOST_PORT}"),
                              ("host3", f"10.0.0.13:{HOST_PORT}")], bind="0.0.0.0:8000",
                             stats_socket="/run/haproxy-modelmill.sock")
    assert f"```\n{example}```" in doc
