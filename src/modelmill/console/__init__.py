"""The web console: see and steer the whole loop in a browser (``modelmill serve`` at ``/ui``, ``modelmill ui``).

Server-rendered pages over the control plane (:mod:`modelmill.control`), with hand-written SVG charts
(:mod:`modelmill.console.charts`, shared with ``report.html``) and one small script; every asset is
packaged, nothing is fetched from anywhere else. See ``docs/howto/console.md``.

    create_console   the Starlette app (modelmill.console.app)
    charts           line_chart, bar_chart, human (12.3k), Point
    session          tokens, the sign-in cookie and CSRF
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_console"]


def __getattr__(name: str) -> Any:
    # Lazy: the monitoring report imports the charts, and the app imports serving; neither may import the other.
    if name == "create_console":
        from modelmill.console.app import create_console

        return create_console
    raise AttributeError(name)
