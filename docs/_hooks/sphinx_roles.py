"""MkDocs hook: Sphinx cross-reference roles in docstrings render as plain code.

Some docstrings name objects Sphinx's way (``:class:`fewcore.config.Config```), which help() and
IDEs show as written; mkdocstrings would print the role's name before the code. ``~`` keeps only
the last component, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):<code>(?P<tilde>~?)(?P<target>[^<]*)</code>")


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role prefix of each cross-reference in a rendered page."""
    return _ROLE.sub(lambda m: f"<code>{m['target'].rsplit('.', 1)[-1] if m['tilde'] else m['target']}</code>", html)
