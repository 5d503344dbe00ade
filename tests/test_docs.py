"""The plugin-author documentation covers every hook."""

from __future__ import annotations

import inspect

from fewcore import hookspecs
from tests.conftest import REPO_ROOT


def test_every_hookspec_has_a_heading_with_its_signature() -> None:
    text = (REPO_ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name, obj in vars(hookspecs).items() if name.startswith("fewcore_") and inspect.isfunction(obj)]
    assert hooks, "no hookspecs found"
    for name in hooks:
        parameters = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        heading = f"### `{name}({parameters})`"
        assert heading in text, f"docs/plugins.md lacks the heading {heading!r}"
