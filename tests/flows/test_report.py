"""The published run report and Data Docs, opened in a real headless Chromium (Debian's `chromium` package)
with every request outside file:// sent to a recording proxy: nothing may leave the machine, every chart is
drawn with titled axes, nothing is wider than a 1280 px window. Screenshots of each section at 1280 px are
kept under var/test-artifacts/report/ (the CI keeps var/)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tailor.flows.nightly import nightly
from tests.conftest import REPO, RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "var" / "test-artifacts" / "report"
VIEWPORT = 1280
SECTIONS = ("run", "models", "experiments", "fairness", "allocation")
# what Chromium asks of Google's services by itself, whatever the page (clock, sign-in, component updates)
BROWSER_OWN = re.compile(
    r"^(CONNECT |GET http://)(accounts\.google\.com|www\.google\.com|clients\d*\.google\.com|"
    r"redirector\.gvt1\.com|(?!fonts\.)[\w-]+\.googleapis\.com)[:/]"
)

# Test instrumentation appended to a copy of the page: once it has laid out, measure every chart (its size,
# its axis titles) and every element wider than the window.
MEASURE = """
<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach(d => d.open = true);  // folded charts are measured too
  const charts = [...document.querySelectorAll("svg.chart")].map(svg => {
    const box = svg.getBoundingClientRect();
    const titles = [...svg.querySelectorAll(".role-axis-title text")].map(t => t.textContent.trim());
    return {title: svg.querySelector("title").textContent, width: box.width, height: box.height,
            axis_titles: titles.filter(t => t.length > 0),
            marks: svg.querySelectorAll(".role-mark path, .role-mark line, .role-mark rect").length};
  });
  const wide = [...document.body.querySelectorAll("*")]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map(e => e.tagName + (e.className && e.className.baseVal === undefined ? "." + e.className : ""));
  document.body.setAttribute("data-check", JSON.stringify(
    {charts, wide, scroll_width: document.documentElement.scrollWidth}));
});
</script>
"""


class Recorder(BaseHTTPRequestHandler):
    """A proxy that answers nothing and writes down every request a page tried to make."""

    requests: ClassVar[list[str]] = []

    def _refuse(self) -> None:
        Recorder.requests.append(f"{self.command} {self.path}")
        self.send_response(502)
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_CONNECT = _refuse

    def log_message(self, *args: object) -> None:  # keep the test's output clean
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.requests = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def chromium(proxy: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium whose every network request, loopback included, goes to the recording proxy."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--proxy-server=http://{proxy}", "--proxy-bypass-list=<-loopback>",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_report_and_data_docs_work_offline_in_headless_chromium(
    company: Path, prefect_harness, tmp_path: Path, proxy: str
) -> None:
    config_path = company / "tailor.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["publish"]["target"] = (company / "published").as_uri()
    config["experiments"] = {"min_units": 20}  # the small company's arms are small: test them anyway
    config_path.write_text(yaml.safe_dump(config))
    nightly(config_path=str(config_path), run_date=RUN_DATE)

    folder = run_folder(company / "published", RUN_DATE)
    report = (folder / "report.html").read_text()
    assert "<script" not in report
    for section in SECTIONS:
        assert f'id="{section}"' in report, section
    for href in re.findall(r'href="([^"#][^"]*)"', report):  # the links lead to what was published
        if not href.startswith("../"):
            assert (folder / html.unescape(href)).is_file(), href
    assert 'href="manifest.json"' in report and "data_docs/raw/index.html" in report

    page = folder / "report-check.html"  # beside the report, so that its relative links resolve
    page.write_text(report.replace("</body>", MEASURE + "</body>"))
    result = chromium(proxy, f"--window-size={VIEWPORT},1000", "--virtual-time-budget=5000", "--dump-dom",
                      page.as_uri())  # fmt: skip
    page.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if "Uncaught" in line] == []
    check = re.search(r'data-check="([^"]*)"', result.stdout)
    assert check, "the page did not finish loading"
    facts = json.loads(html.unescape(check.group(1)))
    titles = [chart["title"] for chart in facts["charts"]]
    for expected in ("Time per stage", "Propensity ROC", "Propensity calibration", "against its baselines",
                     "feature importance", "Segment sizes", "Variant allocation", "relative lift against",
                     "disparate-impact ratio"):  # fmt: skip
        assert any(expected in title for title in titles), (expected, titles)
    for chart in facts["charts"]:
        assert chart["width"] > 100 and chart["height"] > 40, chart
        assert len(chart["axis_titles"]) >= 2 and chart["marks"] > 0, chart
    assert facts["wide"] == [] and facts["scroll_width"] <= VIEWPORT, facts["wide"][:10]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for section in SECTIONS:  # each section alone on a copy of the page, the top 1600 px of it
        shot, alone = ARTIFACTS / f"{section}.png", folder / f"report-{section}.html"
        shot.unlink(missing_ok=True)
        alone.write_text(report.replace("</head>", f"<style>section:not(#{section}) {{display: none}}</style></head>"))
        taken = chromium(proxy, f"--window-size={VIEWPORT},1600", "--virtual-time-budget=3000",
                         f"--screenshot={shot}", alone.as_uri())  # fmt: skip
        alone.unlink()
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-1000:]

    # the Data Docs, styled and complete from the published folder alone
    for docs in sorted((folder / "data_docs").glob("*/index.html")):
        shown = chromium(proxy, f"--window-size={VIEWPORT},1000", "--virtual-time-budget=5000", "--dump-dom",
                         docs.as_uri())  # fmt: skip
        assert shown.returncode == 0, shown.stderr[-1000:]
    asked = [request for request in Recorder.requests if not BROWSER_OWN.match(request)]
    assert asked == []  # no page asked for anything beyond its own folder
