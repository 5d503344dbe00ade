"""Siamese networks: the balanced pair sampler, both losses and heads, one-shot classification, learning."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import fewcore
from fewcore import Episode, ops
from fewcore.plugins.learners.siamese import SiameseNetwork, balanced_pairs, class_scores, contrastive_loss
from fewcore.testing import random_episode

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(generator: torch.Generator, batch: int, n_way: int, per_class: int) -> Tensor:
    return torch.stack([torch.randperm(n_way * per_class, generator=generator) % n_way for _ in range(batch)])


@pytest.mark.parametrize(("n_way", "k_shot", "q_query"), [(2, 1, 1), (5, 1, 3), (4, 3, 2)])
def test_pairs_are_balanced_correctly_labelled_and_cover_every_other_class(n_way: int, k_shot: int, q_query: int) -> None:
    gen = torch.Generator().manual_seed(0)
    support_y, query_y = _labels(gen, 3, n_way, k_shot), _labels(gen, 3, n_way, q_query)
    pairs = balanced_pairs(query_y, support_y, n_way)
    n_pairs = 2 * k_shot * n_way * q_query
    assert pairs.query_index.shape == pairs.support_index.shape == pairs.same.shape == (3, n_pairs)
    assert (pairs.same.sum(dim=1) == n_pairs // 2).all()  # as many same as different, in every task
    tasks = torch.arange(3)[:, None]
    same_class = query_y[tasks, pairs.query_index] == support_y[tasks, pairs.support_index]
    assert torch.equal(same_class, pairs.same)
    for task in range(3):
        # each query: all K support items of its class, K of one other class, no pair twice
        for q in range(n_way * q_query):
            mine = pairs.support_index[task][pairs.query_index[task] == q]
            assert len(set(mine.tolist())) == 2 * k_shot
        negatives = support_y[task, pairs.support_index[task][~pairs.same[task]]]
        assert set(negatives.tolist()) == set(range(n_way))  # the negatives cycle through the classes


def test_pairs_are_deterministic() -> None:
    gen = torch.Generator().manual_seed(1)
    support_y, query_y = _labels(gen, 2, 5, 2), _labels(gen, 2, 5, 4)
    first, second = balanced_pairs(query_y, support_y, 5), balanced_pairs(query_y.clone(), support_y.clone(), 5)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_pairs_with_chosen_other_classes_use_exactly_those_classes() -> None:
    gen = torch.Generator().manual_seed(2)
    support_y, query_y = _labels(gen, 2, 4, 3), _labels(gen, 2, 4, 2)
    other = (query_y + 1 + torch.randint(0, 3, query_y.shape, generator=gen)) % 4
    pairs = balanced_pairs(query_y, support_y, 4, other)
    tasks = torch.arange(2)[:, None]
    paired_class = support_y[tasks, pairs.support_index]
    expected = torch.where(pairs.same, query_y[tasks, pairs.query_index], other[tasks, pairs.query_index])
    assert torch.equal(paired_class, expected)
    assert (pairs.same.sum(dim=1) == pairs.same.shape[1] // 2).all()
    with pytest.raises(ValueError, match="other than the query's own"):
        balanced_pairs(query_y, support_y, 4, query_y)
    with pytest.raises(ValueError, match=r"other must be \[B, Nq\]"):
        balanced_pairs(query_y, support_y, 4, other[:, :1])


def test_hardest_negatives_pair_each_query_with_its_most_similar_other_class() -> None:
    episode = random_episode((1, 28, 28), n_way=5, k_shot=2, q_query=3, batch_size=2, seed=3)
    learner = SiameseNetwork(fewcore.create("backbone", "conv4", hidden_channels=4), negatives="hardest").eval()
    captured = {}

    def spy(query_y: Tensor, support_y: Tensor, n_way: int, other: Tensor | None = None) -> Any:
        captured["other"] = other
        return balanced_pairs(query_y, support_y, n_way, other)

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("fewcore.plugins.learners.siamese.balanced_pairs", spy)
        scores = learner(episode).logits
    own = F.one_hot(episode.query_y, 5).bool()
    best_other = scores.masked_fill(own, float("-inf")).argmax(dim=-1)
    assert torch.equal(captured["other"], best_other)
    assert not (best_other == episode.query_y).any()


def test_pairs_reject_unbalanced_supports_and_single_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        balanced_pairs(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="same number of support items"):
        balanced_pairs(torch.tensor([[0, 1]]), torch.tensor([[0, 0, 1, 0]]), 2)


def test_contrastive_loss_convention_y_is_one_for_different_classes() -> None:
    distance = torch.tensor([0.5, 0.5, 2.0])
    different = torch.tensor([False, True, True])
    # same pair: D² = 0.25; different within margin 1: (1 − 0.5)² = 0.25; different beyond it: 0
    assert contrastive_loss(distance, different, margin=1.0).item() == pytest.approx((0.25 + 0.25 + 0.0) / 3)


def test_class_scores_take_the_best_support_item_of_each_class() -> None:
    similarity = torch.tensor([[[0.1, 0.9, 0.3, -2.0]]])
    support_y = torch.tensor([[1, 0, 1, 2]])
    torch.testing.assert_close(class_scores(similarity, support_y, 3), torch.tensor([[[0.9, 0.3, -2.0]]]))


def test_contrastive_scores_are_negative_distances_from_pairwise_distance() -> None:
    episode = random_episode((1, 28, 28), n_way=3, k_shot=2, q_query=2, batch_size=2, seed=0)
    # seeded: the copy check below needs an initialisation whose embeddings tell the items apart,
    # which must not depend on what earlier tests drew from the global generator
    torch.manual_seed(0)
    learner = SiameseNetwork(fewcore.create("backbone", "conv4", hidden_channels=4)).eval()
    with torch.no_grad():
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        support = learner.backbone(episode.support_x.flatten(0, 1)).view(2, 6, -1)
        query = learner.backbone(episode.query_x.flatten(0, 1)).view(2, 6, -1)
        distance = ops.reference.pairwise_distance(query, support, "euclidean")
    expected = class_scores(-distance, episode.support_y, 3)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    # a query that is a copy of a support item goes to that item's class
    with torch.no_grad():
        copies = learner.predict(episode.support_x, episode.support_y, episode.support_x)
    assert torch.equal(copies.argmax(-1), episode.support_y)


def test_koch_head_is_weighted_l1_through_a_sigmoid_with_bce() -> None:
    episode = random_episode((1, 28, 28), n_way=2, k_shot=1, q_query=1, batch_size=1, seed=3)
    # eval mode: batch norm normalizes each item alone, so embedding items one set at a time agrees
    learner = SiameseNetwork(fewcore.create("backbone", "conv4", hidden_channels=4), head="koch").eval()
    out = learner(episode)
    with torch.no_grad():
        h_s = learner.backbone(episode.support_x[0])
        h_q = learner.backbone(episode.query_x[0])
        alpha, bias = learner.verifier.weight[0], learner.verifier.bias[0]
        logits = torch.stack([torch.stack([(alpha * (q - s).abs()).sum() + bias for s in h_s]) for q in h_q])
        same = (episode.query_y[0][:, None] == episode.support_y[0][None, :]).float()
        # 2-way 1-shot 1-query: the four query × support pairs are exactly the balanced pairs
        expected_loss = F.binary_cross_entropy(torch.sigmoid(logits), same)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    torch.testing.assert_close(out.logits.detach()[0], class_scores(logits[None], episode.support_y, 2)[0])


def test_bad_configuration_is_reported() -> None:
    backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
    with pytest.raises(ValueError, match="head"):
        SiameseNetwork(backbone, head="cosine")
    with pytest.raises(ValueError, match="margin"):
        SiameseNetwork(backbone, margin=0)
    with pytest.raises(ValueError, match="negatives"):
        SiameseNetwork(backbone, negatives="random")


def _accuracy(learner: SiameseNetwork, episodes: list[Episode]) -> float:
    learner.eval()
    with torch.no_grad():
        hits = [(learner(e).logits.argmax(-1) == e.query_y).float().mean() for e in episodes]
    learner.train()
    return float(torch.stack(hits).mean())


@pytest.mark.parametrize(
    ("config", "steps", "minimum"),
    [
        ({"head": "contrastive"}, 60, 0.5),
        ({"head": "contrastive", "negatives": "hardest"}, 60, 0.5),
        ({"head": "koch"}, 120, 0.3),
    ],
)
def test_siamese_learns_one_shot_glyphs(config: dict[str, Any], steps: int, minimum: float) -> None:
    if "episodic" not in fewcore.list_components("sampler"):
        pytest.skip("the episodic sampler is not registered")
    torch.manual_seed(0)
    # 16×16 glyphs (the smallest Conv4 takes) keep this a few seconds
    dataset = fewcore.create("dataset", "glyphs", alphabets=20, characters=10, drawings=10, image_size=16)

    def episodes(split: str, n_way: int, seed: int) -> Any:
        return fewcore.create(
            "sampler", "episodic", dataset=dataset, split=split, n_way=n_way, k_shot=1, q_query=5, batch_size=2, seed=seed
        )

    test = list(itertools.islice(episodes("test", 5, 1), 10))
    learner = SiameseNetwork(fewcore.create("backbone", "conv4", hidden_channels=16), item_shape=dataset.item_shape, **config)
    before = _accuracy(learner, test)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for episode in itertools.islice(episodes("train", 5, 0), steps):
        optimizer.zero_grad()
        learner(episode).loss.backward()
        optimizer.step()
    after = _accuracy(learner, test)
    assert after > minimum and after > before + 0.1, f"5-way 1-shot glyph accuracy {before:.2f} → {after:.2f} (chance 0.20)"
