"""Inline SVG bar charts for the review page: plain markup, no script, no external asset.

Amounts stay exact Decimals up to here; only the geometry is approximate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

WIDTH = 900
LABEL_WIDTH = 200
VALUE_WIDTH = 200  # room for "28.60 USD of 600.00 USD" after the longest bar
ROW = 26
BAR = 16
MIN_BAR = 2.0  # a nonzero amount stays visible however small


@dataclass(frozen=True)
class Bar:
    label: str
    value: Decimal
    text: str  # the value as shown
    limit: Decimal | None = None


def _scale(value: Decimal, top: Decimal, length: float) -> float:
    if top <= 0 or value <= 0:
        return 0.0
    return max(MIN_BAR, float(value / top) * length)


def hbar_chart(chart_id: str, title: str, bars: Sequence[Bar]) -> str:
    """One row per bar, longest scale first; a limit shows as a shaded allowance and a marker."""
    area = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    top = max([b.value for b in bars] + [b.limit for b in bars if b.limit is not None] + [Decimal(0)])
    height = ROW * max(len(bars), 1) + 8
    parts = [
        f'<svg class="chart hbar" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    if not bars:
        parts.append(f'<text x="0" y="{ROW - 8}" class="empty">nothing was spent</text>')
    for i, b in enumerate(bars):
        y = 4 + i * ROW
        mid = y + ROW / 2
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{mid + 4:.1f}" text-anchor="end" class="label">{escape(b.label)}</text>'
        )
        if b.limit is not None and b.limit > 0:
            parts.append(
                f'<rect class="allowance" x="{LABEL_WIDTH}" y="{mid - BAR / 2:.1f}" '
                f'width="{_scale(b.limit, top, area):.1f}" height="{BAR}"/>'
            )
        over = b.limit is not None and b.value > b.limit
        width = _scale(b.value, top, area)
        parts.append(
            f'<rect class="bar{" over" if over else ""}" x="{LABEL_WIDTH}" y="{mid - BAR / 2:.1f}" '
            f'width="{width:.1f}" height="{BAR}"><title>{escape(b.label)}: {escape(b.text)}</title></rect>'
        )
        if b.limit is not None and b.limit > 0:
            x = LABEL_WIDTH + _scale(b.limit, top, area)
            parts.append(
                f'<line class="limit" x1="{x:.1f}" x2="{x:.1f}" y1="{mid - BAR / 2 - 3:.1f}" '
                f'y2="{mid + BAR / 2 + 3:.1f}"/>'
            )
        # The value reads past the bar and past the limit marker, whichever ends later.
        end = max(width, _scale(b.limit, top, area) + 3 if b.limit is not None and b.limit > 0 else 0.0)
        parts.append(f'<text x="{LABEL_WIDTH + end + 6:.1f}" y="{mid + 4:.1f}" class="value">{escape(b.text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def column_chart(chart_id: str, title: str, columns: Sequence[Bar], *, axis_text: Sequence[str]) -> str:
    """Columns over time (the daily trend), with four gridlines labelled by ``axis_text``."""
    left, bottom, plot_height = 70, 30, 220
    height = plot_height + bottom + 10
    area = WIDTH - left - 10
    step = area / max(len(columns), 1)
    top = max([c.value for c in columns] + [Decimal(0)])
    parts = [
        f'<svg class="chart columns" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, text in enumerate(axis_text):  # gridlines at 0, 1/3, 2/3 and the top
        y = 10 + plot_height - plot_height * i / max(len(axis_text) - 1, 1)
        parts.append(f'<line class="grid" x1="{left}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(text)}</text>')
    for i, c in enumerate(columns):
        h = _scale(c.value, top, plot_height)
        x = left + i * step + step * 0.15
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{10 + plot_height - h:.1f}" width="{step * 0.7:.1f}" '
            f'height="{h:.1f}"><title>{escape(c.label)}: {escape(c.text)}</title></rect>'
        )
        parts.append(
            f'<text x="{x + step * 0.35:.1f}" y="{10 + plot_height + 16}" text-anchor="middle" class="axis">'
            f"{escape(c.label[-2:])}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
