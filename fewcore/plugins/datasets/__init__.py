"""Built-in datasets, registered through the `fewcore` entry-point group like any third party's."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register
from fewcore.plugins.datasets._store import ClassStore
from fewcore.plugins.datasets.folder import Folder
from fewcore.plugins.datasets.glyphs import Glyphs
from fewcore.plugins.datasets.omniglot import Omniglot
from fewcore.plugins.datasets.tensors import Tensors

__all__ = ["ClassStore", "Folder", "Glyphs", "Omniglot", "Tensors"]


@hookimpl
def fewcore_register_datasets(register: Register) -> None:
    register("glyphs", Glyphs)
    register("omniglot", Omniglot)
    register("folder", Folder)
    register("tensors", Tensors)
