"""The page shell and the small HTML helpers every console page is written with.

Pages are server-rendered: every value goes through :func:`esc` (or :func:`human` for numbers), so a
model name, a filter or a dead letter's payload can never become markup. The shell links the
console's own stylesheet and script from ``/ui/static`` (packaged in the wheel: nothing is fetched
from anywhere else), gives a skip link, a navigation bar whose links are reachable by Tab, and the
sign-out form.

    >>> table(["a", "b"], [["<x>", 12345]])
    '<table><thead><tr><th scope="col">a</th><th scope="col">b</th></tr></thead><tbody><tr><td>&lt;x&gt;</td><td class="num">12.3k</td></tr></tbody></table>'
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from modelmill.console.charts import human

__all__ = ["NAV", "Raw", "badge", "esc", "link", "page", "table", "when"]

#: The navigation bar: (path under the console, label).
NAV = (("", "Overview"), ("runs", "Runs"), ("rollouts", "Rollouts"), ("experiments", "Experiments"),
       ("monitoring", "Monitoring"), ("ingestion", "Ingestion"))


class Raw(str):
    """Markup already escaped (a link, a chart): :func:`table` puts it in as it is."""

    __slots__ = ()


def esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


def when(epoch: Any) -> str:
    """An epoch time (or datetime) as ``2013-03-04 10:00 UTC``; ``–`` when unknown."""
    if epoch is None:
        return "–"
    if isinstance(epoch, dt.datetime):
        stamp = epoch if epoch.tzinfo else epoch.replace(tzinfo=dt.UTC)
    else:
        try:
            stamp = dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            return esc(epoch)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def link(base: str, path: str, text: Any, **query: Any) -> Raw:
    """An ``<a>`` to the console page ``path`` (each segment URL-quoted by the caller)."""
    q = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in query.items() if v is not None)
    href = f"{base}/{path}" + (f"?{q}" if q else "")
    return Raw(f'<a href="{esc(href)}">{esc(text)}</a>')


def badge(status: Any) -> Raw:
    """A status word in a coloured pill (pass, fail, no data, firing...); the word carries the meaning."""
    word = "no data" if status in ("no_data", None) else str(status)
    tone = {"pass": "ok", "completed": "ok", "measured": "ok", "resolved": "ok", "promote": "ok", "inactive": "ok",
            "fail": "bad", "firing": "bad", "rolled_back": "bad", "rollback": "bad", "failed": "bad",
            "active": "live", "running": "live", "pending": "warn", "hold": "warn"}.get(word, "none")
    return Raw(f'<span class="badge {tone}">{esc(word)}</span>')


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{esc('–' if value is None else value)}</td>"
    if isinstance(value, int | float):
        return f'<td class="num">{human(value)}</td>'
    return f"<td>{esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          empty: str = "nothing yet", cls: str = "") -> str:
    """A table; numbers are right-aligned and human-formatted, strings escaped, :class:`Raw` kept."""
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # a key/value table has no header row
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}>{cap}{thead}<tbody>{body}</tbody></table>"


def page(base: str, title: str, body: str, *, viewer: Any = None, active: str = "", poll: int | None = None,
         flash: str | None = None) -> str:
    """The whole document of one page: head, navigation, ``body``; ``poll`` seconds makes it refresh its
    ``#live`` part in place."""
    current = ' aria-current="page"'
    nav = "".join(f'<a href="{esc(base)}/{p}"{current if p == active else ""}>{esc(label)}</a>' for p, label in NAV)
    who = ""
    if viewer is not None:
        signout = ""
        if viewer.via == "cookie":
            signout = (f'<form method="post" action="{esc(base)}/signout" class="inline">'
                       f'<input type="hidden" name="csrf" value="{esc(viewer.csrf)}">'
                       f'<button type="submit">Sign out</button></form>')
        who = (f'<span class="who">{esc(viewer.token.name)} ({esc(viewer.token.role)})</span>{signout}')
    notice = f'<p class="flash" role="status">{esc(flash)}</p>' if flash else ""
    data_poll = f' data-poll="{int(poll)}"' if poll else ""
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{esc(title)} · modelmill console</title>"
            f'<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{esc(base)}/static/console.css">'
            f'<script src="{esc(base)}/static/console.js" defer></script></head>'
            f'<body{data_poll}><a class="skip" href="#main">Skip to content</a>'
            f'<header><a class="brand" href="{esc(base)}/">modelmill</a><nav aria-label="main">{nav}</nav>{who}'
            f"</header><main id=\"main\" tabindex=\"-1\"><h1>{esc(title)}</h1>{notice}{body}</main></body></html>")
