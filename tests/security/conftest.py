"""Security fixtures: serving's real ``modelmill serve`` process helper."""

from __future__ import annotations

from tests.serving.conftest import serve

__all__ = ["serve"]
