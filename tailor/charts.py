"""The report's charts: Vega-Lite specifications built with Altair and rendered to static SVG by vl-convert
(its own JavaScript engine, in process), so the report needs no script, no network and no browser to draw.

Every chart titles both axes with their unit; colour is used only where it encodes something (significance,
a flag, which model), never one colour per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import polars as pl

WIDTH = 480  # px of the plotting area: with 300 px of labels and a legend, a chart fits half of 1280 px
BAR_HEIGHT = 18
FONT = "system-ui, sans-serif"
# a colour-blind-safe pair (Okabe-Ito) for good and bad, and grey for "nothing to say"
GOOD, BAD, NEUTRAL, ACCENT = "#009E73", "#D55E00", "#8c8c8c", "#0072B2"
SIGNIFICANCE = alt.Scale(
    domain=["better", "worse", "not significant"], range=[GOOD, BAD, NEUTRAL]
)


def render(chart: alt.TopLevelMixin, description: str) -> str:
    """The chart as inline SVG with a <title> for screen readers and a class the report's CSS and tests use."""
    import vl_convert

    spec = (
        chart.configure(font=FONT)
        .configure_view(stroke=None)
        .configure_legend(labelLimit=220, titleLimit=220)
        .configure_axis(labelLimit=300, titlePadding=12)
        .to_dict()
    )
    svg = vl_convert.vegalite_to_svg(spec)
    title = description.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    svg = svg.replace('class="marks"', 'class="chart marks" role="img"', 1)
    return svg.replace(">", f"><title>{title}</title>", 1)


def _empty(message: str) -> str:
    return f'<p class="empty">{message}</p>'


def lift_chart(rows: pl.DataFrame, title: str) -> str:
    """Relative lift against control in % with its interval, one row per variant and metric: the main view of
    an experiment. `rows`: label, lift_pct, low_pct, high_pct, outcome (better | worse | not significant)."""
    tested = rows.filter(pl.col("lift_pct").is_not_null() & pl.col("lift_pct").is_finite())
    if tested.height == 0:
        return _empty(f"{title}: nothing tested yet.")
    base = alt.Chart(tested).encode(
        y=alt.Y("label:N", title="variant and metric", sort=None, axis=alt.Axis(labelLimit=300))
    )
    x = alt.X("lift_pct:Q", title="relative lift against control (%)")
    interval = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low_pct:Q", title="relative lift against control (%)"),
        x2="high_pct:Q",
        color=alt.Color("outcome:N", scale=SIGNIFICANCE, title="result"),
    )
    point = base.mark_point(filled=True, size=70).encode(
        x=x,
        color=alt.Color("outcome:N", scale=SIGNIFICANCE, title="result"),
        tooltip=["label", "lift_pct", "low_pct", "high_pct"],
    )
    zero = alt.Chart(pl.DataFrame({"zero": [0.0]})).mark_rule(color="#333", strokeDash=[4, 3]).encode(x="zero:Q")
    chart = (interval + point + zero).properties(
        title=title, width=WIDTH, height=max(BAR_HEIGHT * tested.height, 40)
    )
    return render(chart, title)


def bar_chart(
    frame: pl.DataFrame,
    label: str,
    value: str,
    title: str,
    value_title: str,
    label_title: str,
    *,
    color: str | None = None,
    color_title: str | None = None,
    color_scale: alt.Scale | None = None,
    reference: float | None = None,
    percent: bool = False,
) -> str:
    """Horizontal bars of `value` by `label`, the value axis titled with its unit. `color` names a column whose
    values mean something (a flag, a model); without it every bar is one colour. `reference` draws a line."""
    if frame.height == 0:
        return _empty(f"{title}: nothing to show.")
    encoding: dict[str, Any] = {
        "y": alt.Y(f"{label}:N", title=label_title, sort=None, axis=alt.Axis(labelLimit=300)),
        "x": alt.X(f"{value}:Q", title=value_title, axis=alt.Axis(format="%") if percent else alt.Undefined),
        "tooltip": [label, value],
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N", title=color_title or color, scale=color_scale or alt.Undefined)
    bars = alt.Chart(frame).mark_bar(color=ACCENT if color is None else alt.Undefined).encode(**encoding)
    layers: list[alt.Chart] = [bars]
    if reference is not None:
        layers.append(
            alt.Chart(pl.DataFrame({"reference": [reference]}))
            .mark_rule(color="#333", strokeDash=[4, 3])
            .encode(x="reference:Q")
        )
    chart = alt.layer(*layers).properties(title=title, width=WIDTH, height=max(BAR_HEIGHT * frame.height, 40))
    return render(chart, title)


def line_chart(
    frame: pl.DataFrame,
    x: str,
    y: str,
    title: str,
    x_title: str,
    y_title: str,
    *,
    series: str | None = None,
    series_title: str | None = None,
    dash: str | None = None,
    dash_title: str | None = None,
    x_type: str = "Q",
    band: tuple[str, str] | None = None,
) -> str:
    """Lines of `y` against `x`; `series` colours one line per value (a variant, a model), `dash` tells a
    reference (random, perfect) from the real thing; `band` shades an interval around the line."""
    if frame.height == 0:
        return _empty(f"{title}: nothing to show.")
    encoding: dict[str, Any] = {
        "x": alt.X(f"{x}:{x_type}", title=x_title),
        "y": alt.Y(f"{y}:Q", title=y_title),
        "tooltip": [c for c in (series, x, y) if c],
    }
    if series:
        encoding["color"] = alt.Color(f"{series}:N", title=series_title or series)
    if dash:
        encoding["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash_title or dash)
    layers: list[alt.Chart] = []
    if band:
        band_encoding = {"x": encoding["x"], "y": alt.Y(f"{band[0]}:Q", title=y_title), "y2": f"{band[1]}:Q"}
        if series:
            band_encoding["color"] = encoding["color"]
        layers.append(alt.Chart(frame).mark_area(opacity=0.15).encode(**band_encoding))
    layers.append(alt.Chart(frame).mark_line(point=frame.height <= 60).encode(**encoding))
    chart = alt.layer(*layers).properties(title=title, width=WIDTH - 80, height=260)
    return render(chart, title)


def finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def percent_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Ratios as percentages (lift 0.208 -> 20.8), None where not finite."""
    return [
        {**row, **{key: (None if finite(row.get(key)) is None else 100 * float(row[key])) for key in keys}}
        for row in rows
    ]
