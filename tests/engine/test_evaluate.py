"""Evaluation: mean ± 95% CI per setting, determinism, no side effects on the learner or RNGs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from fewcore.config import ComponentConfig
from fewcore.engine import evaluate, mean_ci95, run_episodes
from fewcore.engine._metrics import episode_accuracy
from tests.engine._fakes import Clusters, IndexSampler, Linear, NearestMean


def test_mean_ci95_matches_the_formula() -> None:
    values = [0.2, 0.9, 0.4, 0.7, 0.55]
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(np.mean(values))
    assert ci == pytest.approx(1.96 * np.std(values, ddof=1) / math.sqrt(len(values)))
    assert mean_ci95([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_episode_accuracy() -> None:
    logits = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.allclose(episode_accuracy(logits, labels), torch.tensor([2 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="disagree"):
        episode_accuracy(logits, labels[:, :2])


@pytest.fixture
def learner() -> NearestMean:
    torch.manual_seed(0)
    return NearestMean(Linear(dropout=0.5))


def test_evaluate_reports_every_setting(fakes, learner: NearestMean) -> None:
    results = evaluate(learner, Clusters(), ["3-way 1-shot", "5-way 2-shot"], episodes=25, q_query=2, batch_size=4)
    assert [(r.n_way, r.k_shot, r.episodes) for r in results] == [(3, 1, 25), (5, 2, 25)]
    for r in results:
        assert 0.0 <= r.accuracy <= 1.0 and r.ci95 > 0 and math.isfinite(r.loss)
    assert str(results[0]).startswith("3-way 1-shot: ") and "± " in str(results[0]) and "(25 episodes)" in str(results[0])


def test_evaluate_counts_exactly_the_asked_episodes(learner: NearestMean) -> None:
    # 10 episodes in batches of 4: the last batch's extra 2 episodes are not counted.
    dataset = Clusters()
    sampler = IndexSampler(dataset, "test", 3, 1, 2, batch_size=4, seed=0)
    result = run_episodes(learner, sampler, 10, "cpu")
    accuracies = []
    learner.eval()
    with torch.no_grad():
        for _, episode in zip(range(3), IndexSampler(dataset, "test", 3, 1, 2, batch_size=4, seed=0)):
            accuracies += episode_accuracy(learner(episode).logits, episode.query_y).tolist()
    assert result.episodes == 10
    assert result.accuracy == pytest.approx(float(np.mean(accuracies[:10])))


def test_evaluate_is_deterministic_and_has_no_side_effects(fakes, learner: NearestMean) -> None:
    learner.train()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = evaluate(learner, Clusters(), ["3-way 1-shot"], episodes=20, q_query=2, seed=4)
    b = evaluate(learner, Clusters(), ["3-way 1-shot"], episodes=20, q_query=2, seed=4)
    c = evaluate(learner, Clusters(), ["3-way 1-shot"], episodes=20, q_query=2, seed=5)
    assert a == b and a != c
    assert learner.training, "evaluation must restore the learner's train mode"
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_evaluate_uses_eval_mode(fakes, learner: NearestMean) -> None:
    # Dropout 0.5 is active in train mode; in eval mode two evaluations agree exactly, and a
    # learner that records its mode during forward sees eval.
    seen = []
    forward = learner.forward

    def spy(episode):
        seen.append(learner.training)
        return forward(episode)

    learner.forward = spy  # type: ignore[method-assign]
    evaluate(learner, Clusters(), ["3-way 1-shot"], episodes=3, q_query=2, sampler=ComponentConfig("episodic"))
    assert seen and not any(seen)


def test_evaluate_rejects_a_bad_setting(fakes, learner: NearestMean) -> None:
    with pytest.raises(ValueError, match="way/shot"):
        evaluate(learner, Clusters(), ["three-way"], episodes=3)
