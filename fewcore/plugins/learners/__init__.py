"""Built-in learners, registered through the ``fewcore`` entry-point group like any third party's.

Each learner lives in its own module; adding one is one line in :data:`LEARNERS`.
"""

from __future__ import annotations

from typing import Callable

from fewcore import Learner, hookimpl
from fewcore.hookspecs import Register
from fewcore.plugins.learners.anil import ANIL
from fewcore.plugins.learners.maml import MAML, MetaSGD
from fewcore.plugins.learners.mann import MANN
from fewcore.plugins.learners.matching import MatchingNetworks
from fewcore.plugins.learners.protonet import PrototypicalNetworks
from fewcore.plugins.learners.relation import RelationNetworks
from fewcore.plugins.learners.reptile import Reptile
from fewcore.plugins.learners.siamese import SiameseNetwork

#: registered name → factory ``factory(backbone=..., **config)``
LEARNERS: dict[str, Callable[..., Learner]] = {
    "protonet": PrototypicalNetworks,
    "matching": MatchingNetworks,
    "maml": MAML,
    "metasgd": MetaSGD,
    "siamese": SiameseNetwork,
    "mann": MANN,
    "anil": ANIL,
    "reptile": Reptile,
    "relation": RelationNetworks,
}


@hookimpl
def fewcore_register_learners(register: Register) -> None:
    for name, factory in LEARNERS.items():
        register(name, factory)
