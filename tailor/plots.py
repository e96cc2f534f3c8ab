"""Plots as inline SVG: the run report opens from a file, offline, with no script and no server."""

from __future__ import annotations

import math
from html import escape

WIDTH, ROW_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT = 620, 26, 150, 20
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def interval_chart(
    title: str, rows: list[tuple[str, float, float, float]], unit: str = "", reference: float = 0.0
) -> str:
    """Point estimates with intervals, one row each (label, estimate, low, high), and a dashed line at
    `reference` (zero: no difference)."""
    finite = [r for r in rows if all(math.isfinite(v) for v in r[1:])]
    if not finite:
        return f'<p class="empty">{escape(title)}: nothing to plot.</p>'
    low = min(reference, *(r[2] for r in finite))
    high = max(reference, *(r[3] for r in finite))
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad
    # room for the longest label (about 6 px a character at 11 px), within reason
    left = max(MARGIN_LEFT, min(340, 16 + 6 * max(len(r[0]) for r in rows)))
    plot_width = WIDTH - left - MARGIN_RIGHT
    height = 40 + ROW_HEIGHT * len(rows) + 30

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_width

    parts = [f'<svg class="plot" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="plot-title">{escape(title)}</text>',
             f'<line x1="{x(reference):.1f}" y1="28" x2="{x(reference):.1f}" y2="{height - 30}" stroke="#888" stroke-dasharray="4 3"/>']  # fmt: skip
    for index, (label, estimate, lo, hi) in enumerate(rows):
        y = 40 + ROW_HEIGHT * index + ROW_HEIGHT / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        if not all(math.isfinite(v) for v in (estimate, lo, hi)):
            parts.append(f'<text x="{left}" y="{y + 4:.1f}" fill="#888">not tested</text>')
            continue
        color = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<line class="interval" x1="{x(lo):.1f}" y1="{y:.1f}" x2="{x(hi):.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="3"/>'
        )
        parts.append(
            f'<circle class="estimate" cx="{x(estimate):.1f}" cy="{y:.1f}" r="4" fill="{color}"><title>{escape(label)}: {_fmt(estimate)}{unit} ({_fmt(lo)} to {_fmt(hi)})</title></circle>'
        )
    axis_y = height - 24
    for tick in _ticks(low, high):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{axis_y + 14}" text-anchor="middle" class="tick">{_fmt(tick)}{unit}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(
    title: str,
    series: dict[str, tuple[list[float], list[float]]],
    x_label: str,
    y_label: str,
    dashed: tuple[str, ...] = (),
) -> str:
    """Lines (label -> (xs, ys)) on shared axes with a legend; labels in `dashed` are drawn dashed."""
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if not points:
        return f'<p class="empty">{escape(title)}: nothing to plot.</p>'
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    if y_high == y_low:
        y_high = y_low + 1
    if x_high == x_low:
        x_high = x_low + 1
    height, left, top, bottom = 300, 70, 30, 50
    legend_width = 150
    plot_width, plot_height = WIDTH - left - MARGIN_RIGHT - legend_width, height - top - bottom

    def sx(value: float) -> float:
        return left + (value - x_low) / (x_high - x_low) * plot_width

    def sy(value: float) -> float:
        return top + (1 - (value - y_low) / (y_high - y_low)) * plot_height

    parts = [f'<svg class="plot" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="plot-title">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#ccc"/>']  # fmt: skip
    for tick in _ticks(x_low, x_high):
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{top + plot_height + 16}" text-anchor="middle" class="tick">{_fmt(tick)}</text>'
        )
    for tick in _ticks(y_low, y_high):
        parts.append(
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_width / 2}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_height / 2}" text-anchor="middle" transform="rotate(-90 14 {top + plot_height / 2})">{escape(y_label)}</text>'
    )
    # a series with nothing finite to draw (a posterior with no spread) is left out, legend included
    drawable = {label: xy for label, xy in series.items() if any(math.isfinite(y) for y in xy[1])}
    for index, (label, (xs, ys)) in enumerate(drawable.items()):
        color = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True) if math.isfinite(y))
        dash = ' stroke-dasharray="5 4"' if label in dashed else ""
        parts.append(
            f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}><title>{escape(label)}</title></polyline>'
        )
        legend_y = top + 14 + 18 * index
        parts.append(
            f'<line x1="{left + plot_width + 12}" y1="{legend_y - 4}" x2="{left + plot_width + 30}" y2="{legend_y - 4}" stroke="{color}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{left + plot_width + 34}" y="{legend_y}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def normal_density(mean: float, sd: float, points: int = 121) -> tuple[list[float], list[float]]:
    """x and density of Normal(mean, sd) over mean +/- 4 sd."""
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd <= 0:
        return [], []
    xs = [mean + sd * (-4 + 8 * i / (points - 1)) for i in range(points)]
    ys = [math.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)) for x in xs]
    return xs, ys


def bar_chart(
    title: str, rows: list[tuple[str, float]], unit: str = "", reference: float | None = None
) -> str:
    """Horizontal bars, one per (label, value), from zero; an optional dashed reference line."""
    finite = [(label, value) for label, value in rows if math.isfinite(value)]
    if not finite:
        return f'<p class="empty">{escape(title)}: nothing to plot.</p>'
    high = max(max(v for _, v in finite), reference or 0.0) or 1.0
    left = max(MARGIN_LEFT, min(340, 16 + 6 * max(len(label) for label, _ in finite)))
    plot_width = WIDTH - left - MARGIN_RIGHT - 60
    height = 40 + ROW_HEIGHT * len(finite) + 10
    parts = [f'<svg class="plot" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="plot-title">{escape(title)}</text>']  # fmt: skip
    for index, (label, value) in enumerate(finite):
        y = 32 + ROW_HEIGHT * index
        width = max(value, 0.0) / high * plot_width
        color = PALETTE[index % len(PALETTE)]
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        parts.append(
            f'<rect class="bar" x="{left}" y="{y + 4}" width="{width:.1f}" height="{ROW_HEIGHT - 8}" fill="{color}"><title>{escape(label)}: {_fmt(value)}{unit}</title></rect>'
        )
        parts.append(f'<text x="{left + width + 4:.1f}" y="{y + 15}" class="tick">{_fmt(value)}{unit}</text>')
    if reference is not None:
        x = left + reference / high * plot_width
        parts.append(
            f'<line x1="{x:.1f}" y1="28" x2="{x:.1f}" y2="{height - 6}" stroke="#888" stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
