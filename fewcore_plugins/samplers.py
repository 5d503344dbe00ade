"""Built-in samplers, registered through the `fewcore` entry-point group like any third party's."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register


@hookimpl
def fewcore_register_samplers(register: Register) -> None:
    pass
