"""The run report, opened in a real headless Chromium (Debian's `chromium` package): every plot is drawn
and no script error is logged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tailor.flows.nightly import nightly
from tests.conftest import RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Test instrumentation appended to a copy of the report (the report itself has no script): measure every
# plot and every mark in it once the page has laid out.
MEASURE = """
<script>
window.addEventListener("load", () => {
  const plots = [...document.querySelectorAll("svg.plot")].map(svg => {
    const box = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll("circle.estimate, polyline.series, rect.bar, line.interval")];
    const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
    return {title: svg.querySelector("title").textContent, width: box.width, height: box.height,
            marks: marks.length, drawn: drawn.length};
  });
  document.body.setAttribute("data-check", JSON.stringify(plots));
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_report_draws_every_plot_in_headless_chromium(
    company: Path, prefect_harness, tmp_path: Path
) -> None:
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["publish"]["target"] = (company / "published").as_uri()
    config["experiments"] = {"min_units": 20}  # the small company's arms are small: test them anyway
    config_path.write_text(yaml.safe_dump(config))
    nightly(config_path=str(config_path), run_date=RUN_DATE)

    report = (run_folder(company / "published", RUN_DATE) / "report.html").read_text()
    assert "<script" not in report
    for section in ("Run summary", "Models", "Segments and allocation", "Experiments", "Fairness audit",
                    "Allocation decisions"):  # fmt: skip
        assert f"<h2>{section}</h2>" in report or f'">{section}</h2>' in report, section
    page = tmp_path / "report.html"
    page.write_text(report.replace("</body>", MEASURE + "</body>"))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert errors == []
    check = re.search(r'data-check="([^"]*)"', result.stdout)
    assert check, "the page did not finish loading"
    plots = json.loads(check.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    titles = [plot["title"] for plot in plots]
    # the plots the issue names: ROC and calibration, ranking against popularity, segment sizes, allocation,
    # experiment lift, posteriors, and fairness ratios
    for expected in ("Propensity ROC", "Propensity calibration", "the model against its baselines", "Segment sizes",
                     "Variant allocation", "difference against control", "posterior of each arm",
                     "disparate-impact ratios"):  # fmt: skip
        assert any(expected in title for title in titles), (expected, titles)
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 40, plot
        assert plot["drawn"] == plot["marks"] and plot["marks"] > 0, plot
