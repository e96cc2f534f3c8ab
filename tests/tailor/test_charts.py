"""The report's charts (tailor/charts.py): Vega-Lite through Altair, rendered to static SVG offline."""

from __future__ import annotations

import re

import polars as pl

from tailor import charts


def axis_titles(svg: str) -> list[str]:
    """The axis titles vl-convert draws: the text of each `role-axis-title` group."""
    groups = re.findall(r'class="mark-text role-axis-title".*?</g>', svg, re.S)
    return [text for group in groups for text in re.findall(r">([^<>]+)</text>", group)]


def test_the_lift_chart_titles_both_axes_and_colours_only_what_is_significant() -> None:
    rows = pl.DataFrame({
        "label": ["a · conversion_rate", "b · conversion_rate", "c · click_rate"],
        "lift_pct": [20.8, -12.0, None], "low_pct": [5.0, -20.0, None], "high_pct": [36.0, -4.0, None],
        "outcome": ["better", "worse", "not significant"],
    })  # fmt: skip
    svg = charts.lift_chart(rows, "weekly: relative lift")
    assert svg.startswith("<svg") and 'class="chart marks"' in svg and "<title>weekly: relative lift</title>" in svg
    assert set(axis_titles(svg)) == {"relative lift against control (%)", "variant and metric"}
    assert charts.GOOD.lower() in svg.lower() and charts.BAD.lower() in svg.lower()
    assert "c · click_rate" not in svg  # untested: not drawn as if it were an estimate
    assert "nothing tested yet" in charts.lift_chart(rows.head(0), "nothing")


def test_bars_take_one_colour_unless_a_column_means_something() -> None:
    frame = pl.DataFrame({"group": ["x", "y", "z"], "ratio": [0.6, 0.75, 0.95],
                          "status": ["flagged", "flagged", "ok"]})  # fmt: skip
    plain = charts.bar_chart(frame, "group", "ratio", "Ratios", "ratio (group / reference)", "group")
    fills = set(re.findall(r'fill="(#[0-9a-fA-F]{6})"', plain)) - {"#ffffff", "#000000"}
    assert charts.ACCENT.lower() in {f.lower() for f in fills}
    coloured = charts.bar_chart(frame, "group", "ratio", "Ratios", "ratio (group / reference)", "group",
                                color="status", reference=0.8)  # fmt: skip
    assert set(axis_titles(coloured)) == {"ratio (group / reference)", "group"}
    assert "status" in coloured and "flagged" in coloured  # the legend says what the colour means


def test_lines_title_axes_and_escape_labels() -> None:
    frame = pl.DataFrame({"x": [0.0, 0.5, 1.0, 0.0, 1.0], "y": [0.0, 0.3, 0.4, 0.0, 0.4],
                          "line": ["<model>", "<model>", "<model>", "random", "random"]})  # fmt: skip
    svg = charts.line_chart(frame, "x", "y", "Qini & co", "share targeted (%)", "incremental per send",
                            dash="line")  # fmt: skip
    assert set(axis_titles(svg)) == {"share targeted (%)", "incremental per send"}
    assert "&lt;model&gt;" in svg and "<model>" not in svg and "<title>Qini &amp; co</title>" in svg
