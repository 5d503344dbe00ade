"""MkDocs hook: links from a docs page to repository files outside ``docs/`` become plain text.

The pages are written to read well on a code host too, where ``[the example](../plugins/x/README.md)``
opens the file. The site has no copy of such files, so MkDocs would report (and the site would
serve) a broken link; instead the link text stays, followed by the path in the repository.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _outside_docs(page_path: str, target: str) -> str | None:
    """The repository path of ``target`` when the link leaves the docs directory, else None."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return None
    path = target.split("#", 1)[0]
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), path))
    if not joined.startswith("../"):
        return None
    return joined[len("../") :]


def _rewrite(line: str, page_path: str) -> str:
    def replace(match: re.Match[str]) -> str:
        repo_path = _outside_docs(page_path, match["target"])
        if repo_path is None:
            return match[0]
        text = match["text"]
        return text if repo_path.rstrip("/") in text else f"{text} (`{repo_path}` in the repository)"

    return _LINK.sub(replace, line)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Rewrite the links of one page that point outside ``docs/``, leaving code blocks alone."""
    lines, in_fence = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        lines.append(line if in_fence else _rewrite(line, page.file.src_uri))
    return "\n".join(lines)
