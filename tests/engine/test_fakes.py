"""The engine tests' fake components honour the same contracts as real ones."""

from __future__ import annotations

from fewcore.testing import check_backbone, check_learner, check_sampler
from tests.engine._fakes import IndexSampler, Linear, NearestMean


def test_fakes_pass_the_conformance_checks() -> None:
    check_sampler(IndexSampler)
    check_backbone(Linear, dropout=0.0)
    check_learner(NearestMean, Linear, backbone_config={"dropout": 0.0})
