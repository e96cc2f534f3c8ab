from __future__ import annotations

import math
import re

from tailor import plots


def test_interval_chart_draws_each_tested_row_and_names_the_untested() -> None:
    svg = plots.interval_chart(
        "lift", [("a", 1.0, 0.5, 1.5), ("b", -0.2, -0.6, 0.3), ("c", math.nan, math.nan, math.nan)]
    )
    assert (
        svg.startswith("<svg") and svg.count('class="estimate"') == 2 and svg.count('class="interval"') == 2
    )
    assert "not tested" in svg and ">c<" in svg
    # the reference line sits between the two estimates' x positions
    line_x = float(re.search(r'<line x1="([\d.]+)" y1="28"', svg).group(1))
    xs = [float(v) for v in re.findall(r'class="estimate" cx="([\d.]+)"', svg)]
    assert min(xs) < line_x < max(xs)


def test_line_chart_draws_one_line_per_series_and_escapes_labels() -> None:
    svg = plots.line_chart("q", {"<model>": ([0, 0.5, 1], [0, 0.2, 0.3]), "random": ([0, 1], [0, 0.3])}, "x", "y",
                           dashed=("random",))  # fmt: skip
    assert svg.count('class="series"') == 2 and "&lt;model&gt;" in svg and "<model>" not in svg
    assert svg.count("stroke-dasharray") == 2  # the dashed line and its legend entry


def test_nothing_to_plot_says_so() -> None:
    assert "nothing to plot" in plots.interval_chart("t", [("a", math.nan, math.nan, math.nan)])
    assert "nothing to plot" in plots.line_chart("t", {}, "x", "y")
    xs, ys = plots.normal_density(0.1, 0.02)
    assert abs(sum(ys) * (xs[1] - xs[0]) - 1) < 0.01


def test_a_series_with_nothing_to_draw_is_left_out() -> None:
    svg = plots.line_chart("p", {"a": ([0, 1], [0, 1]), "flat": ([], [])}, "x", "y")
    assert svg.count('class="series"') == 1 and ">flat<" not in svg
