"""Data Docs that open offline (issue #18): real Great Expectations Data Docs of a tiny validation, as GX writes
them and as the gate (tasks/validate.py: Gate.write_docs) leaves them for publishing, with every script,
stylesheet and image pointed at a bundled copy inside the folder; and, where Debian's `chromium` is installed,
opened in headless Chromium with every connection refused. A stage's folder carries only what its pages use
(the Data Docs added 5.9 MB of fonts, images and scripts to every stage of every published run)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import socket
import subprocess
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import pytest

from tailor.datadocs import (
    BUNDLE,
    CHART_SCRIPTS,
    LEFT_OUT,
    SITE_FILES,
    VENDOR,
    VENDORED,
    bundled_stylesheet,
    is_external,
    localize_assets,
)
from tailor.quality import ExpectationSpec
from tailor.tasks import validate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]*)['"]?\s*\)""")
CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?['"]([^'"]*)['"]""")
# GX's pages on a chartless run: what a stage's static/ folder may weigh; a run publishes two stages (raw and
# features), so their Data Docs stay under 2 MB (they were 11.7 MB, 5.9 MB a stage)
STATIC_BYTES_PER_STAGE = 1_000_000
# a chart block as GX's render/view/templates/graph.j2 writes it, with a one-bar vega-lite spec
CHART = """
<div class="show-scrollbars">
  <div id="tailor-chart-graph" ></div>
</div>
<script>
    // Assign the specification to a local variable vlSpec.
    vlSpec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "mark": "bar",
              "data": {"values": [{"value": "a", "count": 3}]},
              "encoding": {"x": {"field": "value", "type": "nominal"}, "y": {"field": "count", "type": "quantitative"}}};
    // Embed the visualization in the container with id `vis`
    vegaEmbed('#tailor-chart-graph', vlSpec, {
        actions: false
    }).then(result=>console.log(result)).catch(console.warn);
</script>
"""


class Loads(HTMLParser):
    """What a page loads when it opens: (tag, attribute, url, the element's attributes), and its inline CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str, str, dict[str, str | None]]] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        wanted = {"script": ["src"], "link": ["href"], "img": ["src", "srcset"], "source": ["src", "srcset"]}
        for name in wanted.get(tag, []):
            value = attributes.get(name)
            if value:
                urls = [c.split()[0] for c in value.split(",") if c.split()] if name == "srcset" else [value]
                self.loads += [(tag, name, url, attributes) for url in urls]
        if attributes.get("style"):
            self.css.append(attributes["style"] or "")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


def loads_of(page: Path) -> Loads:
    parser = Loads()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def key(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.lower() + parts.path


def files_in(folder: Path, under: str) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in (folder / under).rglob("*") if p.is_file()}


def chart_files() -> set[str]:
    return {VENDORED[url] for url in CHART_SCRIPTS}


class Links(HTMLParser):
    """Every URL a page names in an attribute (src, href, srcset, poster, data), and its inline CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name == "srcset":
                self.urls += [c.split()[0] for c in value.split(",") if c.split()]
            elif value and name in ("src", "href", "poster", "data"):
                self.urls.append(value)
            elif value and name == "style":
                self.css.append(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


def references(folder: Path) -> list[tuple[Path, str]]:
    """(file, url) for every URL the folder's pages name in their attributes and CSS, and every url() and
    @import of the folder's stylesheets."""
    found = []
    for page in sorted(folder.rglob("*.html")):
        links = Links()
        links.feed(page.read_text(encoding="utf-8"))
        found += [(page, url) for url in links.urls]
        found += [(page, url) for css in links.css for url in CSS_URL.findall(css) + CSS_IMPORT.findall(css)]
    for sheet in sorted(folder.rglob("*.css")):
        css = sheet.read_text(encoding="utf-8")
        found += [(sheet, url) for url in CSS_URL.findall(css) + CSS_IMPORT.findall(css)]
    return found


def names_a_file(url: str) -> bool:
    """False for URLs that name no file of the folder: fragments, data:, javascript:, mailto:, other hosts."""
    url = url.strip()
    return bool(url) and not url.startswith("#") and not urlsplit(url).scheme and not is_external(url)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny validation (a failing not-null and a failing range check); its Data Docs as GX writes them
    (`raw`, the rewrite switched off) and as the gate writes them for publishing (`local`)."""
    root = tmp_path_factory.mktemp("data_docs")
    gate = validate.Gate("raw")
    frame = pd.DataFrame(
        {"_row_key": [1, 2, 3], "_source_file": ["f1"] * 3, "user_id": ["u1", None, "u3"], "n": [1, 5, 50]}
    )
    specs = [
        ExpectationSpec(rule="user_id_present", type="expect_column_values_to_not_be_null",
                        kwargs={"column": "user_id"}),
        ExpectationSpec(rule="n_small", type="expect_column_values_to_be_between",
                        kwargs={"column": "n", "min_value": 0, "max_value": 10}, severity="warning"),
    ]  # fmt: skip
    gate.run("events", frame, specs, datetime(2026, 1, 3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "localize_assets", lambda folder: [])
        gate.write_docs(root / "raw")
    gate.write_docs(root / "local")
    return root / "raw", root / "local"


def test_the_bundle_maps_every_url_gx_loads_and_nothing_else(docs: tuple[Path, Path]) -> None:
    raw, _ = docs
    pages = sorted(raw.rglob("*.html"))
    assert len(pages) >= 3  # the index, a validation result and an expectation suite
    found = set()
    for page in pages:
        parsed = loads_of(page)
        found |= {key(url) for _, _, url, _ in parsed.loads if is_external(url)}
        found |= {key(url) for css in parsed.css for url in CSS_URL.findall(css) if is_external(url)}
    # a GX upgrade that loads something new, or no longer loads something, shows here first
    assert found == set(VENDORED) | set(SITE_FILES) | set(LEFT_OUT)
    for path in VENDORED.values():
        assert (BUNDLE / path).is_file(), path
        package = path.split("/", 1)[0]
        assert [f for f in (BUNDLE / package).iterdir() if f.name.startswith("LICENSE")], package


def test_the_bundled_copies_are_the_files_gx_pins(docs: tuple[Path, Path]) -> None:
    """GX pins the hash of two of its scripts; the bundled copies have exactly those hashes."""
    raw, _ = docs
    pinned = {
        key(url): attributes["integrity"]
        for page in raw.rglob("*.html")
        for _, _, url, attributes in loads_of(page).loads
        if attributes.get("integrity")
    }
    assert len(pinned) == 2, pinned  # bootstrap.min.js and popper.min.js
    for url, integrity in pinned.items():
        algorithm, digest = (integrity or "").split("-", 1)
        actual = hashlib.new(algorithm, (BUNDLE / VENDORED[url]).read_bytes()).digest()
        assert base64.b64encode(actual).decode() == digest, url


def test_published_docs_load_everything_from_their_own_folder(docs: tuple[Path, Path]) -> None:
    raw, local = docs
    linked = set()
    for page in sorted(local.rglob("*.html")):
        parsed, before = loads_of(page), loads_of(raw / page.relative_to(local))
        urls = [url for _, _, url, _ in parsed.loads] + [
            u for css in parsed.css for u in CSS_URL.findall(css)
        ]
        assert urls, page
        for url in urls:
            assert not is_external(url) and not url.startswith("//"), (page, url)
        # every element GX pointed at the internet now points at a file in the folder (the dark-mode logo
        # of the inline CSS is left out: GX ships no copy, and vega with it: these pages draw no chart); GX's
        # own relative links stay as they were, but for the favicon link GX gets wrong on a result page
        kept = [load for load in before.loads if key(load[2]) not in CHART_SCRIPTS]
        assert len(kept) == len(before.loads) - len(CHART_SCRIPTS), page
        assert len(parsed.loads) == len(kept), page
        for (_, _, url, attributes), (_, _, original, _) in zip(parsed.loads, kept, strict=True):
            if not is_external(original):
                resolves = (page.parent / unquote(urlsplit(original).path)).is_file()
                assert url == original if resolves else url.endswith("static/images/favicon.ico"), (page, url)
                continue
            target = (page.parent / unquote(urlsplit(url).path)).resolve()
            assert target.is_file() and target.is_relative_to(local.resolve()), (page, url)
            linked.add(target)
            # a pinned hash or CORS mode cannot load from file://
            assert "integrity" not in attributes and "crossorigin" not in attributes, (page, url)
    vendor = (local / VENDOR).resolve()
    copied = {p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()}
    vendored = {p.relative_to(vendor).as_posix() for p in linked if p.is_relative_to(vendor)}
    from_site = {p.relative_to(local.resolve()).as_posix() for p in linked if not p.is_relative_to(vendor)}
    assert vendored == set(VENDORED.values()) - chart_files() and from_site == set(SITE_FILES.values())
    assert set(VENDORED.values()) - chart_files() <= copied and not copied & chart_files()
    assert "fortawesome-fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2" in copied  # the icons' font
    assert {p.split("/", 1)[0] for p in copied if "/LICENSE" in p} == {p.split("/", 1)[0] for p in copied}
    for path in copied:
        # the bundle's files as npm serves them; a stylesheet without the font files the bundle leaves out
        bundled = bundled_stylesheet(path).encode() if path.endswith(".css") else (BUNDLE / path).read_bytes()
        assert (vendor / path).read_bytes() == bundled, path


def test_a_published_stage_carries_only_what_its_pages_use_and_links_nothing_missing(
    docs: tuple[Path, Path],
) -> None:
    raw, local = docs
    # what used to be published, GX's own static/ folder alone: 3.5 MB of images, 0.6 MB of fonts
    assert sum(f.stat().st_size for f in (raw / "static").rglob("*") if f.is_file()) > 4_000_000
    static = [f for f in (local / "static").rglob("*") if f.is_file()]
    weight = sum(f.stat().st_size for f in static)
    assert weight < STATIC_BYTES_PER_STAGE, sorted((f.stat().st_size, str(f)) for f in static)[-5:]
    # every file the pages and stylesheets name is in the folder; a published page links nothing missing
    linked = set()
    for source, url in references(local):
        if names_a_file(url):
            target = (source.parent / unquote(urlsplit(url).path)).resolve()
            assert target.is_file() and target.is_relative_to(local.resolve()), (source, url)
            linked.add(target)
    font = local / VENDOR / "fortawesome-fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2"
    assert {(local / "static/images/favicon.ico").resolve(), font.resolve()} <= linked
    # and every static file is one something links, or a licence
    assert [f for f in static if f.resolve() not in linked and not f.name.startswith("LICENSE")] == []
    # no CDN is named anywhere: not in a page, not in a stylesheet (the pages' navigation links stay)
    cdns = {key(f"//{url}").split("/", 1)[0] for url in [*VENDORED, *SITE_FILES, *LEFT_OUT]}
    for text_file in [*local.rglob("*.html"), *local.rglob("*.css")]:
        text = text_file.read_text(encoding="utf-8")
        assert [host for host in cdns if host in text] == [], text_file
    assert not [url for source, url in references(local) if is_external(url) and source.suffix == ".css"]


def test_unlinked_site_files_go_and_linked_ones_stay(tmp_path: Path) -> None:
    """GX's static/ folder keeps the files a page or a stylesheet links, however it links them."""
    files = {
        "static/images/shown.png": b"png", "static/images/tutorial.gif": b"gif",
        "static/styles/site.css": b"@font-face{src:url('../fonts/used%20font.woff2')} .x{background:url(bg.svg)}",
        "static/styles/bg.svg": b"<svg/>", "static/fonts/used font.woff2": b"woff2",
        "static/fonts/unused.otf": b"otf", "static/images/srcset-2x.png": b"png",
    }  # fmt: skip
    for path, body in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(body)
    page = tmp_path / "validations" / "page.html"
    page.parent.mkdir()
    page.write_text(
        '<html><head><link rel="stylesheet" href="../static/styles/site.css?v=1"></head><body>'
        '<img src="../static/images/shown.png#top" srcset="../static/images/srcset-2x.png 2x" alt="">'
        '<a href="#top">top</a><a href="mailto:data@example.com">mail</a></body></html>'
    )
    assert localize_assets(tmp_path) == []
    left = files_in(tmp_path, "static")
    assert left == set(files) - {"static/images/tutorial.gif", "static/fonts/unused.otf"}
    assert localize_assets(tmp_path) == [] and files_in(tmp_path, "static") == left  # a rerun removes nothing


def test_a_page_that_draws_a_chart_keeps_vega(docs: tuple[Path, Path], tmp_path: Path) -> None:
    raw, _ = docs
    folder = tmp_path / "charted"
    charted = with_a_chart(raw, folder)
    assert localize_assets(folder) == []
    scripts = [url for tag, _, url, _ in loads_of(charted).loads if tag == "script"]
    vega = [url for url in scripts if "vega" in url]
    assert len(vega) == len(CHART_SCRIPTS), scripts
    for url in vega:
        assert (charted.parent / url).resolve().is_file(), url
    # the other pages draw none and load none
    others = [page for page in folder.rglob("*.html") if page != charted]
    assert others and not any("vega" in page.read_text(encoding="utf-8") for page in others)


def test_an_unknown_url_is_left_out_with_a_warning_and_a_rerun_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    page = tmp_path / "validations" / "page.html"
    page.parent.mkdir()
    page.write_text(
        "<html><head>\n"
        '<script src="//code.jquery.com/jquery-3.7.1.min.js" crossorigin="anonymous"></script>\n'
        '<script src="https://cdn.example.com/tracker.js"></script>\n'
        '<link rel="stylesheet" href="http://cdn.example.com/theme.css">\n'
        "<style>.logo { background: url('https://cdn.example.com/logo.png') no-repeat; }\n"
        ".dark { background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png'); }"
        "</style>\n"
        '</head><body><img src="https://cdn.example.com/pixel.gif" alt="">\n'
        '<a href="https://greatexpectations.io">Great Expectations</a></body></html>\n'
    )
    with caplog.at_level(logging.WARNING, logger="tailor.datadocs"):
        left_out = localize_assets(tmp_path)
    assert left_out == [
        "http://cdn.example.com/theme.css", "https://cdn.example.com/logo.png",
        "https://cdn.example.com/pixel.gif", "https://cdn.example.com/tracker.js",
    ]  # fmt: skip
    assert "cdn.example.com/tracker.js" in caplog.text and "full_logo_dark" not in caplog.text
    text = page.read_text()
    assert "cdn.example.com" not in text and "web-assets" not in text and "crossorigin" not in text
    assert '<script src="../static/vendor/jquery-3.7.1/dist/jquery.min.js"></script>' in text
    assert '<a href="https://greatexpectations.io">' in text  # a link is followed only when clicked
    assert (tmp_path / VENDOR / "jquery-3.7.1" / "dist" / "jquery.min.js").is_file()
    assert (tmp_path / VENDOR / "jquery-3.7.1" / "LICENSE.txt").is_file()
    assert localize_assets(tmp_path) == [] and page.read_text() == text


# Test instrumentation appended to a copy of a page: what bootstrap, jQuery, bootstrap-table and Font Awesome
# did to it once it has loaded.
PROBE = """
<script>
window.addEventListener("load", async () => {
  await document.fonts.ready;
  // bootstrap-table may fill its rows after the load event on a busy machine: give it up to 3 s
  const filled = () => document.querySelectorAll(".bootstrap-table tbody tr td:not(:empty)").length > 0
    && document.querySelectorAll("[id$='-graph']:empty").length === 0;  // and every chart drawn
  for (let wait = 0; wait < 30 && !filled(); wait++) await new Promise(done => setTimeout(done, 100));
  const style = (selector, property) => {
    const element = document.querySelector(selector);
    return element ? getComputedStyle(element)[property] : null;
  };
  document.body.setAttribute("data-check", JSON.stringify({
    navbar: style("nav.navbar", "display"),
    padding: style(".container-fluid.pl-5", "paddingLeft"),
    jquery: typeof window.jQuery === "function",
    table: !!(window.jQuery && jQuery.fn.bootstrapTable),
    vega: typeof window.vegaEmbed === "function",
    charts: document.querySelectorAll("[id$='-graph'] canvas, [id$='-graph'] svg").length,
    rows: [...document.querySelectorAll(".bootstrap-table tbody tr")].map(row => row.innerText),
    icons: [...document.fonts].filter(f => f.family === "Font Awesome 6 Free" && f.status === "loaded").length,
  }));
});
</script>
"""


def open_offline(page: Path, netlog: Path) -> tuple[dict, list[str], list[str]]:
    """Open `page` (a probe copy beside it) in headless Chromium whose every connection is refused: what the
    page measured, the URLs it asked the network for, and the console errors."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    with socket.socket() as closed:  # a port nothing listens on: the proxy that refuses every connection
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", f"--proxy-server=http://127.0.0.1:{port}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking", "--no-first-run",
         f"--log-net-log={netlog}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    check = re.search(r'data-check="([^"]*)"', result.stdout)
    assert check, f"{page.name} did not finish loading"
    measured = json.loads(check.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    log = netlog.read_text()
    events = json.loads(log if log.rstrip().endswith("}") else log.rstrip().rstrip(",") + "]}")
    start = events["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # the page's own requests, told from the browser's background ones by their file:// site
    requested = sorted(
        {
            params["url"]
            for params in (event.get("params") or {} for event in events["events"] if event["type"] == start)
            if "file://" in params.get("network_isolation_key", "") + params.get("site_for_cookies", "")
        }
    )
    errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return measured, requested, errors


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_published_docs_are_styled_and_show_their_results_with_the_network_blocked(
    docs: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, local = (shutil.copytree(folder, tmp_path / folder.name) for folder in docs)

    # as GX writes them: the page asks the internet for its styles and scripts, gets nothing, and is bare
    measured, requested, _ = open_offline(raw / "index.html", tmp_path / "raw.netlog.json")
    assert "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" in requested
    assert measured["navbar"] == "block" and not measured["jquery"] and measured["rows"] == []

    measured, requested, errors = open_offline(local / "index.html", tmp_path / "index.netlog.json")
    assert requested == [] and errors == []
    assert measured["navbar"] == "flex" and measured["padding"] == "48px"  # bootstrap's .navbar and .pl-5
    assert measured["jquery"] and measured["table"] and not measured["vega"]  # no chart: no vega
    # bootstrap-table drew both lists from the page's data: the two validations and the two suites
    rows = measured["rows"]
    assert len([row for row in rows if "UTC" in row and "tailor_raw-events" in row]) == 2, rows
    assert {"raw.events", "raw.events_failing_rows"} <= {row.strip() for row in rows}, rows
    assert measured["icons"] == 1  # Font Awesome's solid face, for the failed marks

    (result,) = (local / "validations").rglob("tailor_raw-events.html")
    measured, requested, errors = open_offline(result, tmp_path / "result.netlog.json")
    assert requested == [] and errors == []
    assert measured["navbar"] == "flex" and measured["padding"] == "48px"
    assert measured["table"] and measured["icons"] == 1
    assert any("unexpected" in row for row in measured["rows"]), measured


def with_a_chart(raw: Path, folder: Path) -> Path:
    """A copy of GX's Data Docs in `folder` whose validation result page draws a chart, as GX writes one."""
    shutil.copytree(raw, folder)
    (page,) = (folder / "validations").rglob("tailor_raw-events.html")
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", CHART + "</body>"), encoding="utf-8")
    return page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_a_chart_is_drawn_with_the_network_blocked(docs: tuple[Path, Path], tmp_path: Path) -> None:
    raw, _ = docs
    charted = with_a_chart(raw, tmp_path / "charted")
    localize_assets(tmp_path / "charted")
    measured, requested, errors = open_offline(charted, tmp_path / "chart.netlog.json")
    assert requested == []
    # GX's chart block logs vega-embed's result on the console; nothing else may be said there
    assert [line for line in errors if "[object Object]" not in line] == [], errors
    assert measured["vega"] and measured["charts"] == 1 and measured["table"]
