"""Built-in datasets, registered through the `fewcore` entry-point group like any third party's."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register
from fewcore.plugins.datasets._store import ClassStore
from fewcore.plugins.datasets.cifar100 import FC100, CifarFS
from fewcore.plugins.datasets.cub import CUB
from fewcore.plugins.datasets.folder import Folder
from fewcore.plugins.datasets.glyphs import Glyphs
from fewcore.plugins.datasets.miniimagenet import MiniImageNet
from fewcore.plugins.datasets.omniglot import Omniglot
from fewcore.plugins.datasets.tensors import Tensors
from fewcore.plugins.datasets.tieredimagenet import TieredImageNet
from fewcore.plugins.datasets.xian import Xian

__all__ = [
    "CUB",
    "FC100",
    "CifarFS",
    "ClassStore",
    "Folder",
    "Glyphs",
    "MiniImageNet",
    "Omniglot",
    "Tensors",
    "TieredImageNet",
    "Xian",
]


@hookimpl
def fewcore_register_datasets(register: Register) -> None:
    register("glyphs", Glyphs)
    register("omniglot", Omniglot)
    register("folder", Folder)
    register("tensors", Tensors)
    register("miniimagenet", MiniImageNet)
    register("tieredimagenet", TieredImageNet)
    register("cifar-fs", CifarFS)
    register("fc100", FC100)
    register("cub", CUB)
    register("xian", Xian)
