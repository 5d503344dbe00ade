"""The example plugin's own tests: fewcore's conformance checks on its components."""

from __future__ import annotations

from fewcore.testing import check_backbone, check_learner
from fewcore_example.components import FlatLinear, NearestNeighbour


def test_flat_linear_meets_the_backbone_contract() -> None:
    check_backbone(FlatLinear, input_shape=(1, 8, 8), out_features=16)


def test_nearest_neighbour_meets_the_learner_contract() -> None:
    check_learner(
        NearestNeighbour,
        backbone_factory=FlatLinear,
        input_shape=(1, 8, 8),
        backbone_config={"out_features": 16},
    )
