"""The documentation site: it builds with no warning, and a real browser finds its pages whole.

The browser is headless Chromium from Debian's packages (``apt-get install chromium``). Without
it the browser tests skip, unless ``FEWCORE_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which
installs Chromium) makes its absence a failure, so CI can never pass them by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

from tests.conftest import REPO_ROOT

#: Chromium flags for a quiet, self-contained headless run (no sandbox: CI runs as root)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class _Page(HTMLParser):
    """The headings, link targets and element ids of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.headings: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._heading: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag == "a" and attributes.get("href"):
            self.links.append(str(attributes["href"]))
        if tag in ("h1", "h2", "h3"):
            self._heading, self._text = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            # The permalink anchor after each heading renders as a pilcrow.
            self.headings.setdefault(tag, []).append(" ".join("".join(self._text).replace("¶", "").split()))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._text.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as ``make docs`` builds it (``mkdocs build --strict``), into a temporary folder."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("FEWCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}, and FEWCORE_REQUIRE_BROWSER=1 requires the browser tests to run")
        pytest.skip(message)
    return path


def render(chromium: str, page: Path, profile: Path) -> _Page:
    """``page`` as the browser builds it (scripts run), read back as HTML."""
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "<html" in result.stdout, f"chromium could not render {page}:\n{result.stderr[-2000:]}"
    return _Page(result.stdout)


def broken_links(site: Path, page: Path, parsed: _Page) -> list[str]:
    """The links of ``page`` to site files or anchors that do not exist."""
    broken = []
    for href in parsed.links:
        if urlsplit(href).scheme in ("http", "https", "mailto"):
            continue
        target, fragment = urldefrag(href)
        file = (page.parent / unquote(target)).resolve() if target else page
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file() or site.resolve() not in file.parents:
            broken.append(f"{href} (no file {file})")
        elif fragment and file.suffix == ".html" and unquote(fragment) not in _Page(file.read_text()).ids:
            broken.append(f"{href} (no element with id {fragment!r} in {file.name})")
    return broken


def test_site_has_a_page_for_every_tutorial_and_api_module(site: Path) -> None:
    for page in ("index.html", "tutorials/quickstart.html", "api/engine.html", "api/builtins.html", "plugins.html"):
        assert (site / page).is_file(), f"the site lacks {page}"


@pytest.mark.parametrize(
    ("page", "title", "expected"),
    [
        ("index.html", "fewcore", ["Install", "Tutorials", "Guides and reference", "The code on these pages"]),
        ("api/engine.html", "fewcore.engine", ["train", "load", "evaluate", "TrainResult dataclass"]),
    ],
)
def test_page_in_a_browser_has_its_headings_and_no_broken_internal_link(
    site: Path, chromium: str, tmp_path: Path, page: str, title: str, expected: list[str]
) -> None:
    parsed = render(chromium, site / page, tmp_path / "profile")
    assert parsed.headings.get("h1", [None])[0] == title
    headings = [text for level in ("h2", "h3") for text in parsed.headings.get(level, [])]
    for heading in expected:
        assert heading in headings, f"{page} lacks the heading {heading!r}; it has {headings}"
    internal = [href for href in parsed.links if not urlsplit(href).scheme]
    assert len(internal) > 10, f"{page} should link to the other pages; found {parsed.links}"
    assert broken_links(site, site / page, parsed) == []


def test_broken_link_check_finds_missing_pages_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "ops.html").write_text('<h2 id="fewcore.ops.pairwise_distance">pairwise_distance</h2>')
    html = (
        '<a href="api/ops.html#fewcore.ops.pairwise_distance">ok</a> <a href="api/ops.html#gone">anchor</a>'
        '<a href="tutorials/missing.html">page</a> <a href="#top">self</a> <a href="https://pytorch.org">external</a>'
        '<a href="../outside.html">outside</a>'
    )
    index = tmp_path / "index.html"
    index.write_text(html + '<span id="top"></span>')
    (tmp_path.parent / "outside.html").write_text("")
    broken = broken_links(tmp_path, index, _Page(index.read_text()))
    assert [entry.split(" ")[0] for entry in broken] == ["api/ops.html#gone", "tutorials/missing.html", "../outside.html"]
