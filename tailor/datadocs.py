"""Great Expectations Data Docs that open offline: every script, stylesheet and image their pages load from a
public CDN is pointed at a copy Tailor bundles (tailor/assets/datadocs/, fetched once from the npm registry at
the exact versions GX names) and copied into the docs folder.

Why: GX 1.x writes pages that load bootstrap, jQuery, bootstrap-table, Font Awesome and vega from CDNs. Opened
from a published run on a machine without internet (or where the company's policy blocks CDNs), they are
unstyled and their results table stays empty, and opened with internet they tell third parties who reads them.
With relative links to files inside the folder, the same folder works from file:// and from S3 alike.

Every published run carries each stage's folder, so the folder holds only what its pages use: GX's static/
folder loses the images and fonts no page or stylesheet links (3.5 MB of tutorial images and 0.6 MB of fonts its
pages never load, in every stage), the vega scripts (0.8 MB) go only with pages that draw a chart, and a
bundled stylesheet names no font file the bundle leaves out.
"""

from __future__ import annotations

import html
import logging
import os
import re
import shutil
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

BUNDLE = Path(__file__).parent / "assets" / "datadocs"
# inside a docs folder, beside GX's own static/images, static/fonts and static/styles
VENDOR = PurePosixPath("static/vendor")

# Every URL GX 1.x's site templates load (render/view/templates: page.j2, page_minimal.j2, index_page.j2,
# js_script_imports.j2), keyed by host and path (scheme and query do not matter), to the same file in the
# bundle: `<npm package>-<version>/<path inside the npm package>`. Where GX names a major version only
# (vega@5, vega-lite@5, vega-embed@6) the bundle holds the newest release of that major when it was made,
# the file the CDN serves for it (the package's `jsdelivr` entry).
VENDORED: dict[str, str] = {
    "maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap-4.3.1/dist/css/bootstrap.min.css",
    "stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap-4.3.1/dist/js/bootstrap.min.js",
    "unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table-1.19.1/dist/bootstrap-table.min.css",
    "unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table-1.19.1/dist/bootstrap-table.min.js",
    "unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table-1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # GX links the unminified build from its result and suite pages and the minified one from its index: the
    # same two rules, so the minified file serves both
    "unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker-1.9.0/dist/css/bootstrap-datepicker.min.css"
    ),
    "cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker-1.9.0/dist/js/bootstrap-datepicker.min.js"
    ),
    # GX names the unminified build (883 kB); the package's minified build of the same release is 153 kB
    "cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "forevolve-bootstrap-dark-1.1.0/dist/css/bootstrap-prefers-dark.min.css"
    ),
    # GX's pages use solid icons only (fas: check, times, warning, comment, question): the bundle carries that
    # one web font; the stylesheet's other faces (regular, brands, v4 shims) and the .ttf fallbacks are left out
    "cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fortawesome-fontawesome-free-6.6.0/css/all.min.css"
    ),
    "code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/dist/jquery.min.js",
    "cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js-1.12.9/dist/umd/popper.min.js",
    "cdn.jsdelivr.net/npm/vega@5": "vega-5.33.1/build/vega.min.js",
    "cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite-5.23.0/build/vega-lite.min.js",
    "cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed-6.29.0/build/vega-embed.min.js",
}

# GX's pages load vega on every page, but only a chart (GX's graph.j2: an inline script calling vegaEmbed) uses
# it: a page without one goes without these 0.8 MB, and the folder carries them only if some page draws a chart.
CHART_SCRIPTS = frozenset(
    {"cdn.jsdelivr.net/npm/vega@5", "cdn.jsdelivr.net/npm/vega-lite@5", "cdn.jsdelivr.net/npm/vega-embed@6"}
)

# Images GX loads from its own web-assets bucket, of which the docs folder already holds a copy (GX copies its
# static/ folder into every site); the path is relative to the docs folder.
SITE_FILES: dict[str, str] = {
    "great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": "static/images/logo-long.png",
}

# Known references with no local copy, left out on purpose (no warning): why.
LEFT_OUT: dict[str, str] = {
    "great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": (
        "the navbar logo in dark mode only; GX ships no copy of it"
    ),
}

_EXTERNAL_SCHEMES = {"", "http", "https"}
# elements that load something when the page opens; <a href> only navigates when clicked and stays as it is
_ELEMENT = re.compile(r"<script\b[^>]*>\s*</script\s*>|<(?:link|img|source)\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""(\s(src|href|srcset)\s*=\s*)("[^"]*"|'[^']*'|[^\s"'>]+)""", re.IGNORECASE)
# a pinned hash or a CORS request cannot be checked for a file:// page: both go with the CDN
_PINNING = re.compile(
    r"""\s(?:integrity|crossorigin)\b(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'>]+))?""", re.IGNORECASE
)
_STYLE = re.compile(r"(<style\b[^>]*>)(.*?)(</style\s*>)", re.IGNORECASE | re.DOTALL)
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(['"])([^'"]*)\1[^;]*;""", re.IGNORECASE)
# a script element with no src: the page's own code, where a chart calls vegaEmbed
_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\ssrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
_USES_VEGA = re.compile(r"\bvega")
_UP = re.compile(r"^(?:\.\.?/)+")  # the ../ and ./ that lead from a page back to the folder
_FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}", re.IGNORECASE)
_FONT_SRC = re.compile(r"(;?\s*)\bsrc\s*:([^;}]*)", re.IGNORECASE)
_TOP_LEVEL_COMMA = re.compile(r",(?![^(]*\))")  # not the commas inside url(...) or format(...)
# the attributes through which a page names a file: loaded (src, srcset, poster, data) or linked (href)
_LINK_ATTRIBUTES = frozenset({"src", "href", "srcset", "poster", "data"})


def is_external(url: str) -> bool:
    """True for a URL a browser fetches from another host: http(s)://... or protocol-relative //..."""
    parts = urlsplit(url.strip())
    return bool(parts.netloc) and parts.scheme.lower() in _EXTERNAL_SCHEMES


def _key(url: str) -> str:
    parts = urlsplit(url.strip())
    return parts.netloc.lower() + parts.path


def localize_assets(folder: Path) -> list[str]:
    """Point every external script, stylesheet and image of the Data Docs in `folder` at a local copy, copy
    the bundled files those pages use (with their licences) into `folder/static/vendor/`, and return the
    external URLs that had no local copy: those are left out of the pages (logged as a warning), never
    fetched. Running it again on the same folder changes nothing."""
    folder = Path(folder)
    used: set[str] = set()
    unknown: set[str] = set()
    for page in sorted(folder.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        rewritten = _rewrite_page(text, page, folder, used, unknown)
        if rewritten != text:
            page.write_text(rewritten, encoding="utf-8")
    _copy_bundle(used, folder / VENDOR)
    _remove_unlinked_site_files(folder)
    if unknown:
        log.warning(
            "Data Docs in %s: left out %d reference(s) to files Tailor bundles no copy of (the pages would "
            "have fetched them from the internet): %s",
            folder, len(unknown), ", ".join(sorted(unknown)),
        )  # fmt: skip
    return sorted(unknown)


def _local(url: str, page: Path, folder: Path, used: set[str]) -> str | None:
    """The relative link from `page` to the local copy of an external `url`, or None when there is none."""
    key = _key(html.unescape(url))
    if key in VENDORED:
        used.add(VENDORED[key])
        target = folder / VENDOR / VENDORED[key]
    elif key in SITE_FILES and (folder / SITE_FILES[key]).is_file():
        target = folder / SITE_FILES[key]
    else:
        return None
    return quote(Path(os.path.relpath(target, page.parent)).as_posix())


def _site_file(url: str, page: Path, folder: Path) -> str | None:
    """GX links its own static/ files by counting folders up from the page, and a validation result page
    counts one too few (favicon.j2: the suite name's dots + 3, for a page 5 folders deep): its favicon link
    names validations/static/..., a file that is nowhere. For a relative `url` that names no file, but does
    name one of the folder's static/ files once its leading ../ are dropped, the right link to that file."""
    parts = urlsplit(html.unescape(url).strip())
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or not path or (page.parent / path).is_file():
        return None
    meant = _UP.sub("", path)
    if not meant.startswith("static/") or not (folder / meant).is_file():
        return None
    link = quote(Path(os.path.relpath(folder / meant, page.parent)).as_posix())
    return urlunsplit(("", "", link, parts.query, parts.fragment))


def _draws_chart(text: str) -> bool:
    """True when a page's own scripts use vega: the only reason it loads vega, vega-lite and vega-embed."""
    return any(_USES_VEGA.search(script) for script in _INLINE_SCRIPT.findall(text))


def _rewrite_page(text: str, page: Path, folder: Path, used: set[str], unknown: set[str]) -> str:
    charts = _draws_chart(text)

    def leave_out(url: str) -> None:
        if _key(html.unescape(url)) not in LEFT_OUT:
            unknown.add(html.unescape(url))

    def element(match: re.Match[str]) -> str:
        tag = match.group(0)
        changed = False
        for attribute in list(_ATTRIBUTE.finditer(tag)):
            name, value = attribute.group(2).lower(), attribute.group(3).strip("\"'")
            if name == "srcset":
                external = [c.split()[0] for c in value.split(",") if c.split() and is_external(c.split()[0])]
                if external:
                    for url in external:
                        leave_out(url)
                    tag = tag.replace(attribute.group(0), "")
                continue
            if not is_external(value):
                site_file = _site_file(value, page, folder)
                if site_file is not None:
                    tag = tag.replace(attribute.group(0), f'{attribute.group(1)}"{site_file}"')
                continue
            if not charts and _key(html.unescape(value)) in CHART_SCRIPTS:
                return ""
            local = _local(value, page, folder, used)
            if local is None:
                leave_out(value)
                return ""  # the whole element: a script or stylesheet that cannot load is no use
            tag = tag.replace(attribute.group(0), f'{attribute.group(1)}"{local}"')
            changed = True
        return _PINNING.sub("", tag) if changed else tag

    def css_reference(match: re.Match[str], written: str, missing: str) -> str:
        """A url() or @import of a stylesheet: `written` with the local copy in place of {}, or `missing`."""
        url = match.group(2)
        if not is_external(url):
            return match.group(0)
        local = _local(url, page, folder, used)
        if local is None:
            leave_out(url)
            return missing
        return written.format(local)

    def style(match: re.Match[str]) -> str:
        css = _CSS_IMPORT.sub(lambda m: css_reference(m, "@import url('{}');", ""), match.group(2))
        css = _CSS_URL.sub(lambda m: css_reference(m, "url('{}')", "none"), css)
        return match.group(1) + css + match.group(3)

    return _ELEMENT.sub(element, _STYLE.sub(style, text))


def _copy_bundle(used: set[str], vendor: Path) -> None:
    """Copy the bundled files the pages link, the files their stylesheets link in turn (fonts), and each
    package's licence file, keeping the bundle's layout so relative links between them still work."""
    wanted: set[str] = set()
    for path in used:
        wanted.add(path)
        package = path.split("/", 1)[0]
        wanted.update(
            f"{package}/{f.name}"
            for f in (BUNDLE / package).iterdir()
            if f.name.upper().startswith("LICENSE")
        )
        if path.endswith(".css"):
            wanted.update(_stylesheet_files(path))
    for path in sorted(wanted):
        target = vendor / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".css"):
            target.write_bytes(bundled_stylesheet(path).encode("utf-8"))
        else:
            shutil.copyfile(BUNDLE / path, target)


def _bundled(url: str, base: PurePosixPath) -> str | None:
    """The bundle path of a relative `url` in a bundled stylesheet in folder `base`, or None for a URL that
    names no file (data: URIs, fragments, external URLs: the bundle's stylesheets link nothing external)."""
    url = url.strip()
    if not url or is_external(url) or ":" in url.split("/", 1)[0] or url.startswith("#"):
        return None
    return os.path.normpath(base / unquote(urlsplit(url).path)).replace(os.sep, "/")


def bundled_stylesheet(path: str) -> str:
    """The bundled stylesheet at `path` as the docs folder carries it: each @font-face names only the font
    files the bundle holds, and a face with none left is dropped. Font Awesome's declares .ttf fallbacks and
    faces the pages never use; a browser would never ask for them, but a published folder should link nothing
    it does not hold (every current browser reads the woff2 that stays)."""
    text = (BUNDLE / path).read_bytes().decode("utf-8")
    base = PurePosixPath(path).parent

    def held(source: str) -> bool:
        url = _CSS_URL.search(source)
        target = _bundled(url.group(2), base) if url else None
        return target is None or (BUNDLE / target).is_file()  # local(...) and data: sources stay

    def sources(match: re.Match[str]) -> str:
        kept = [source.strip() for source in _TOP_LEVEL_COMMA.split(match.group(2)) if held(source)]
        return f"{match.group(1)}src:{','.join(kept)}" if kept else ""

    def face(match: re.Match[str]) -> str:
        rule = _FONT_SRC.sub(sources, match.group(0))
        return rule.replace("{;", "{") if _FONT_SRC.search(rule) else ""

    return _FONT_FACE.sub(face, text)


def _stylesheet_files(path: str) -> set[str]:
    """The bundled files a bundled stylesheet links by relative URL; a linked file the bundle leaves out on
    purpose (a font face the pages never use) stays out."""
    files = set()
    base = PurePosixPath(path).parent
    for match in _CSS_URL.finditer(bundled_stylesheet(path)):
        relative = _bundled(match.group(2), base)
        if relative is None:
            continue
        if (BUNDLE / relative).is_file():
            files.add(relative)
        else:
            log.debug("%s links %s, which the bundle leaves out", path, relative)
    return files


class _Links(HTMLParser):
    """The URLs a page names in its elements' attributes, and the CSS of its <style> elements and style
    attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if not value:
                continue
            if name == "srcset":
                self.urls += [candidate.split()[0] for candidate in value.split(",") if candidate.split()]
            elif name in _LINK_ATTRIBUTES:
                self.urls.append(value)
            elif name == "style":
                self.css.append(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


def _css_urls(css: str) -> list[str]:
    return [m.group(2) for m in _CSS_URL.finditer(css)] + [m.group(2) for m in _CSS_IMPORT.finditer(css)]


def _target(url: str, directory: Path) -> Path | None:
    """The file a relative `url` names from `directory`, or None for one that names no file here."""
    url = url.strip()
    if not url or url.startswith(("#", "/")) or urlsplit(url).scheme or is_external(url):
        return None  # fragments, site-absolute paths, data:, javascript:, mailto:, other hosts
    path = unquote(urlsplit(url).path)
    return Path(os.path.normpath(directory / path)) if path else None


def _linked_files(folder: Path) -> set[Path]:
    """Every file in `folder` that a page links (any element's src, href, srcset, poster or data, and the
    url() and @import of its CSS), and the files those stylesheets link in turn."""
    folder = Path(os.path.abspath(folder))
    pending: list[tuple[Path, Iterable[str]]] = []
    for page in folder.rglob("*.html"):
        links = _Links()
        links.feed(page.read_text(encoding="utf-8"))
        pending.append((page, links.urls + [url for css in links.css for url in _css_urls(css)]))
    linked: set[Path] = set()
    while pending:
        source, urls = pending.pop()
        for url in urls:
            target = _target(url, source.parent)
            if target is None or target in linked or not target.is_file():
                continue
            linked.add(target)
            if target.suffix.lower() == ".css":
                pending.append((target, _css_urls(target.read_text(encoding="utf-8", errors="replace"))))
    return linked


def _remove_unlinked_site_files(folder: Path) -> None:
    """Remove the files of GX's static/ folder that nothing links: GX copies the whole folder into every site,
    tutorial animations and fonts its pages never load included. The vendored files are all linked or
    licences, and stay."""
    folder = Path(os.path.abspath(folder))
    static, vendor = folder / "static", folder / VENDOR
    if not static.is_dir():
        return
    linked = _linked_files(folder)
    for path in sorted(static.rglob("*"), reverse=True):  # files before the folders that hold them
        if path.is_file() and not path.is_relative_to(vendor) and path not in linked:
            path.unlink()
        elif path.is_dir() and path != vendor and not any(path.iterdir()):
            path.rmdir()
