"""Real data shipped by installed packages, loaded without network access."""

from __future__ import annotations

from modelmill.datasets.clicks import ClickStream
from modelmill.datasets.nycflights13 import load_flights, load_planes

__all__ = ["ClickStream", "load_flights", "load_planes"]
