"""The hook implementations fewcore finds through the ``fewcore`` entry point."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register
from fewcore_example.components import FlatLinear, NearestNeighbour


@hookimpl
def fewcore_register_backbones(register: Register) -> None:
    register("flat-linear", FlatLinear)


@hookimpl
def fewcore_register_learners(register: Register) -> None:
    register("nearest-neighbour", NearestNeighbour)
