"""Every registered backbone, learner, sampler and dataset honours its contract (fewcore.testing).

The parameters are read from the registry when the tests are collected (``pytest_generate_tests``),
not when this file is imported: a plugin that fails to load fails one test that says which and
why, and every other test of the file still runs. A component is tested the day it is
registered, whichever plugin registers it:

* backbones: ``check_backbone`` on their ``example_input_shape``;
* learners × backbones: ``check_learner`` of every learner with every backbone of at most
  :data:`SMALL_BACKBONE` parameters (conv4, mlp, ...); the large ones (resnet12, torchvision's)
  take minutes over all learners on 2 CPU cores, so they run only with
  ``FEWCORE_CONFORMANCE_ALL=1``. A learner that refuses a backbone when it is built (e.g. a
  learner that needs feature maps given a flat MLP) is skipped with its reason;
* samplers: ``check_sampler`` on a ToyDataset;
* datasets: ``check_dataset`` on those that build without configuration (the others need data
  files, and are skipped saying so).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import pytest
import torch

import fewcore
from fewcore.testing import check_backbone, check_dataset, check_learner, check_sampler

#: backbones with more parameters are checked with every learner only when FEWCORE_CONFORMANCE_ALL=1
SMALL_BACKBONE = 1_000_000
ALL = os.environ.get("FEWCORE_CONFORMANCE_ALL", "") not in ("", "0")


class _RegistryFailed:
    """The parameter that stands for the whole registry when the plugins failed to load."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __repr__(self) -> str:
        return "plugins-failed-to-load"


@cache
def _backbone_parameters(name: str) -> int:
    with torch.device("meta"):  # counted without allocating (or initialising) any weight
        backbone = fewcore.registry().create("backbone", name)
    return sum(p.numel() for p in backbone.parameters())


def _learner_backbone_pairs(registry: fewcore.Registry) -> list[Any]:
    pairs = []
    for backbone in registry.names("backbone"):
        large = _backbone_parameters(backbone) > SMALL_BACKBONE
        marks = [] if ALL or not large else [pytest.mark.skip(reason=f"{backbone} is large: set FEWCORE_CONFORMANCE_ALL=1")]
        pairs += [pytest.param(learner, backbone, marks=marks, id=f"{learner}-{backbone}") for learner in registry.names("learner")]
    return pairs


#: test → the component names it is parametrized with
PARAMETERS: dict[str, tuple[str, ...]] = {
    "test_backbone_conforms": ("backbone",),
    "test_learner_conforms_with_backbone": ("learner", "backbone"),
    "test_sampler_conforms": ("sampler",),
    "test_dataset_conforms": ("dataset",),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = PARAMETERS.get(metafunc.function.__name__)
    if names is None:
        return
    try:
        registry = fewcore.registry()
    except fewcore.PluginLoadError as error:
        failed = _RegistryFailed(error)
        metafunc.parametrize(names, [(failed, *[None] * (len(names) - 1))], ids=[repr(failed)])
        return
    if names == ("learner", "backbone"):
        metafunc.parametrize(names, _learner_backbone_pairs(registry))
    else:
        metafunc.parametrize(names[0], registry.names(names[0]))


def _fail_if_unloaded(parameter: Any) -> None:
    if isinstance(parameter, _RegistryFailed):
        pytest.fail(f"the registry could not be built: {parameter.error}")


def test_the_built_in_components_are_registered() -> None:
    registry = fewcore.registry()
    assert {"conv4", "resnet12", "mlp"} <= set(registry.names("backbone"))
    assert {"protonet", "matching", "maml", "siamese", "mann"} <= set(registry.names("learner"))
    assert {"glyphs", "omniglot", "folder", "tensors"} <= set(registry.names("dataset"))


def test_backbone_conforms(backbone: str) -> None:
    _fail_if_unloaded(backbone)
    check_backbone(fewcore.registry().get("backbone", backbone).factory)


def test_learner_conforms_with_backbone(learner: str, backbone: str) -> None:
    _fail_if_unloaded(learner)
    registry = fewcore.registry()
    backbone_factory = registry.get("backbone", backbone).factory
    try:
        registry.create("learner", learner, backbone=backbone_factory())
    except (NotImplementedError, ValueError) as refusal:
        pytest.skip(f"{learner} refuses {backbone} when built: {refusal}")
    check_learner(registry.get("learner", learner).factory, backbone_factory=backbone_factory)


def test_sampler_conforms(sampler: str) -> None:
    _fail_if_unloaded(sampler)
    check_sampler(fewcore.registry().get("sampler", sampler).factory)


def test_dataset_conforms(dataset: str) -> None:
    _fail_if_unloaded(dataset)
    factory = fewcore.registry().get("dataset", dataset).factory
    try:
        built = factory()
    except (TypeError, FileNotFoundError, ValueError) as needs:
        pytest.skip(f"{dataset} does not build without configuration or data: {needs}")
    check_dataset(built)
