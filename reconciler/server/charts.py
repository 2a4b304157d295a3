"""Small charts as inline SVG, drawn on the server: no chart library, no JavaScript.

A chart is a time axis (the last ``days`` days) with one or more series of points
``(when, value, label)``; bars for counts, dots for durations. Colours come from the
stylesheet (classes ``s0``, ``s1``), every point has a ``<title>`` (a tooltip), and the
chart has a text alternative for screen readers.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

W, H = 560, 140
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass
class Series:
    name: str
    points: list[tuple[str, float, str]] = field(default_factory=list)  # (ISO time, value, label)


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.2g} s" if v < 10 else f"{v:.0f} s"
    return f"{v:,.0f}"


def chart(title: str, series: list[Series], *, unit: str = "", dots: bool = False, days: int = 30,
          now: float | None = None) -> Markup:
    now = time.time() if now is None else now
    start = now - days * 86400
    values = [v for s in series for _, v, _ in s.points]
    top = max(values) if values else 0
    top = top if top > 0 else 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + max(0.0, min(1.0, (t - start) / (now - start))) * pw

    def y(v: float) -> float:
        return TOP + ph - (v / top) * ph

    n = sum(len(s.points) for s in series)
    desc = f"{title}: {n} point(s) in the last {days} days" + (f", at most {_fmt(top, unit)}" if values else "")
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(desc)}" '
           f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
           f"<title>{escape(desc)}</title>"]
    # grid: the baseline, the top, and a tick a week
    out.append(f'<line class="axis" x1="{LEFT}" y1="{TOP + ph}" x2="{W - RIGHT}" y2="{TOP + ph}"/>')
    out.append(f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{W - RIGHT}" y2="{TOP}"/>')
    out.append(f'<text class="label" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{escape(_fmt(top, unit))}</text>')
    out.append(f'<text class="label" x="{LEFT - 4}" y="{TOP + ph + 4}" text-anchor="end">0</text>')
    for back in range(days, 3, -7):  # a date a week, the last one some days before "now"
        t = now - back * 86400
        out.append(f'<text class="label" x="{x(t):.1f}" y="{H - 6}" text-anchor="middle">'
                   f'{time.strftime("%d %b", time.gmtime(t))}</text>')
    out.append(f'<text class="label" x="{W - RIGHT}" y="{H - 6}" text-anchor="end">now</text>')
    if not values:
        out.append(f'<text class="label empty" x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle">'
                   f"nothing in the last {days} days</text>")
    bar = max(2.0, min(10.0, pw / max(n, 1) * 0.6))
    for i, s in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * (bar + 1)
        for when, v, label in s.points:
            cx = x(_epoch(when)) + (0 if dots else offset)
            tip = escape(f"{s.name}: {_fmt(v, unit)} — {label}")
            if dots:
                out.append(f'<circle class="s{i}" cx="{cx:.1f}" cy="{y(v):.1f}" r="3.5"><title>{tip}</title></circle>')
            else:
                hgt = max(1.0 if v > 0 else 0.0, TOP + ph - y(v))
                out.append(f'<rect class="s{i}" x="{cx - bar / 2:.1f}" y="{TOP + ph - hgt:.1f}" width="{bar:.1f}" '
                           f'height="{hgt:.1f}"><title>{tip}</title></rect>')
    out.append("</svg>")
    return Markup("".join(out))
