"""MkDocs hook: the built-in components page documents every public module of ``fewcore.plugins``.

The page holds a marker; each module found under ``fewcore/plugins/`` (files and packages whose
names do not start with ``_``) gets a mkdocstrings ``:::`` block there, so a new built-in is in
the API reference the day it lands, without anyone editing the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- fewcore-builtin-modules -->"
PACKAGE = Path(__file__).resolve().parents[2] / "fewcore" / "plugins"


def builtin_modules() -> list[str]:
    """Dotted names of the public modules under ``fewcore/plugins`` (not the packages' ``__init__``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
        if path.name != "__init__.py" and not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace the marker with one ``:::`` block per built-in module."""
    if MARKER not in markdown:
        return markdown
    blocks = [
        f"::: {name}\n    options:\n      show_root_heading: true\n      show_root_toc_entry: true\n"
        for name in builtin_modules()
    ]
    return markdown.replace(MARKER, "\n".join(blocks))
