"""Built-in datasets, registered through the `fewcore` entry-point group like any third party's."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register
from fewcore_plugins.datasets._store import ClassStore
from fewcore_plugins.datasets.glyphs import Glyphs

__all__ = ["ClassStore", "Glyphs"]


@hookimpl
def fewcore_register_datasets(register: Register) -> None:
    register("glyphs", Glyphs)
