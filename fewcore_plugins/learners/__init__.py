"""Built-in learners, registered through the ``fewcore`` entry-point group like any third party's.

Each learner lives in its own module; adding one is one line in :data:`LEARNERS`.
"""

from __future__ import annotations

from typing import Callable

from fewcore import Learner, hookimpl
from fewcore.hookspecs import Register
from fewcore_plugins.learners.matching import MatchingNetworks
from fewcore_plugins.learners.protonet import PrototypicalNetworks

#: registered name → factory ``factory(backbone=..., **config)``
LEARNERS: dict[str, Callable[..., Learner]] = {
    "protonet": PrototypicalNetworks,
    "matching": MatchingNetworks,
}


@hookimpl
def fewcore_register_learners(register: Register) -> None:
    for name, factory in LEARNERS.items():
        register(name, factory)
