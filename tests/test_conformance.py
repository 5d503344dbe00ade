"""Every registered backbone, learner and sampler honours its contract (fewcore.testing's checks).

The parameters are read from the registry, so a component is tested the day it is registered,
whichever plugin (built-in or installed) registers it. Backbones are checked on their
``example_input_shape``; learners on a tiny random episode batch with the built-in Conv4; samplers
on fewcore.testing's ToyDataset.
"""

from __future__ import annotations

import pytest

import fewcore
from fewcore.testing import check_backbone, check_learner, check_sampler

REGISTRY = fewcore.registry()


def test_the_built_in_components_are_registered() -> None:
    assert {"conv4", "resnet12", "mlp"} <= set(REGISTRY.list("backbone"))
    assert {"protonet", "matching"} <= set(REGISTRY.list("learner"))


@pytest.mark.parametrize("name", REGISTRY.list("backbone"))
def test_backbone_conforms(name: str) -> None:
    check_backbone(REGISTRY.get("backbone", name).factory)


@pytest.mark.parametrize("name", REGISTRY.list("learner"))
def test_learner_conforms(name: str) -> None:
    check_learner(REGISTRY.get("learner", name).factory, backbone_factory=REGISTRY.get("backbone", "conv4").factory)


@pytest.mark.parametrize("name", REGISTRY.list("sampler"))
def test_sampler_conforms(name: str) -> None:
    check_sampler(REGISTRY.get("sampler", name).factory)
