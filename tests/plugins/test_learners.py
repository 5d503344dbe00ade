"""The built-in learners: their equations, label handling, input errors, and that they learn.

The registry-driven contract checks (gradients, determinism, ...) are in tests/test_conformance.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import fewcore
from fewcore import Backbone, Episode, Learner
from fewcore.plugins.backbones import MLP
from fewcore.plugins.learners.matching import FullContextEmbedding, MatchingNetworks
from fewcore.plugins.learners.protonet import PrototypicalNetworks, prototypes
from fewcore.testing import random_episode


class Flatten(Backbone):
    """The identity on flattened items: learners' outputs can be computed by hand."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return math.prod(input_shape)


def _learner(name: str, backbone: Backbone, **config: Any) -> Learner:
    return fewcore.create("learner", name, backbone=backbone, **config)


#: every built-in learner configuration, as (registered name, config)
CONFIGS = [
    ("protonet", {}),
    ("protonet", {"distance": "euclidean"}),
    ("protonet", {"distance": "cosine", "scale": 10.0}),
    ("matching", {}),
    ("matching", {"temperature": 1.0}),
    ("matching", {"metric": "sqeuclidean"}),
    ("matching", {"fce": True, "fce_steps": 3}),
]
IDS = [
    "protonet", "protonet-euclidean", "protonet-cosine",
    "matching", "matching-T1", "matching-sqeuclidean", "matching-fce",
]


def _build(name: str, config: dict[str, Any], features: int, backbone: Backbone | None = None) -> Learner:
    torch.manual_seed(0)
    backbone = backbone if backbone is not None else MLP(in_features=features, hidden_features=(32,), out_features=16)
    if config.get("fce"):
        config = {**config, "item_shape": (features,)}
    return _learner(name, backbone, **config)


# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --- equations -------------------------------------------------------------------------------


def test_prototypes_are_class_means_whatever_the_label_order() -> None:
    episode = random_episode((5,), n_way=4, k_shot=3, batch_size=2, seed=1)
    means = prototypes(episode.support_x, episode.support_y, 4)
    for task in range(2):
        for label in range(4):
            expected = episode.support_x[task][episode.support_y[task] == label].mean(0)
            torch.testing.assert_close(means[task, label], expected)


@pytest.mark.parametrize("distance", ["sqeuclidean", "euclidean", "cosine"])
def test_protonet_scores_are_scaled_negative_distances_to_prototypes(distance: str) -> None:
    episode = random_episode((6,), n_way=3, k_shot=2, q_query=4, batch_size=2, seed=2)
    learner = _learner("protonet", Flatten(), distance=distance, scale=2.0)
    scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
    centres = prototypes(episode.support_x, episode.support_y, 3)
    if distance == "cosine":
        # 1 - cos is the distance; the softmax does not see the constant
        expected = 2.0 * F.cosine_similarity(episode.query_x[:, :, None], centres[:, None], dim=-1)
    else:
        power = 2 if distance == "sqeuclidean" else 1
        expected = -2.0 * torch.cdist(episode.query_x, centres) ** power
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_matching_scores_are_log_attention_over_one_hot_labels(temperature: float) -> None:
    episode = random_episode((6,), n_way=3, k_shot=2, q_query=4, batch_size=2, seed=3)
    learner = _learner("matching", Flatten(), temperature=temperature)
    output = learner(episode)
    cosine = F.cosine_similarity(episode.query_x[:, :, None], episode.support_x[:, None], dim=-1)
    probabilities = torch.softmax(cosine / temperature, dim=-1) @ F.one_hot(episode.support_y, 3).float()
    torch.testing.assert_close(output.logits, probabilities.log())
    torch.testing.assert_close(output.loss, F.nll_loss(probabilities.log().flatten(0, 1), episode.query_y.flatten()))


def test_matching_with_squared_euclidean_scores_is_protonet_at_one_shot() -> None:
    # Snell et al. (2017), comparing the two: with one support item per class they coincide.
    episode = random_episode((6,), n_way=4, k_shot=1, q_query=3, batch_size=2, seed=5)
    matching = _learner("matching", Flatten(), metric="sqeuclidean", temperature=0.5)
    protonet = _learner("protonet", Flatten(), scale=2.0)
    expected = torch.log_softmax(protonet.predict(episode.support_x, episode.support_y, episode.query_x), dim=-1)
    # Matching Networks clamp probabilities at 1e-8 before the log.
    torch.testing.assert_close(matching(episode).logits, expected.clamp_min(math.log(1e-8)), rtol=1e-4, atol=1e-4)


def test_matching_rejects_an_unknown_metric() -> None:
    with pytest.raises(ValueError, match=r"metric must be one of cosine, sqeuclidean; got 'dot'"):
        _learner("matching", Flatten(), metric="dot")


def test_protonet_loss_is_query_cross_entropy() -> None:
    episode = random_episode((6,), seed=4)
    output = _learner("protonet", Flatten())(episode)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits.flatten(0, 1), episode.query_y.flatten()))


def test_fce_support_embedding_reads_the_whole_support_set() -> None:
    torch.manual_seed(0)
    fce = FullContextEmbedding(size=4, steps=2)
    support = torch.randn(1, 5, 4)
    changed = support.clone()
    changed[0, -1] += 1.0
    # the bidirectional LSTM carries the last item's change back to the first item ...
    assert not torch.allclose(fce.embed_support(support)[0, 0], fce.embed_support(changed)[0, 0])
    # ... and g(x_i, S) = h→_i + h←_i + g'(x_i)
    both, _ = fce.support_lstm(support)
    torch.testing.assert_close(fce.embed_support(support), both[..., :4] + both[..., 4:] + support)


def test_fce_query_embedding_follows_the_attention_lstm_equations() -> None:
    torch.manual_seed(0)
    fce = FullContextEmbedding(size=4, steps=2)
    queries, support = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    inputs = queries.reshape(6, 4)
    hidden, cell = torch.zeros(6, 4), torch.zeros(6, 4)
    for _ in range(2):
        # r_{k-1} = Σ_i softmax_i(h_{k-1}ᵀ g(x_i)) g(x_i), per task
        attention = torch.softmax(hidden.view(2, 3, 4) @ support.transpose(1, 2), dim=-1)
        read = (attention @ support).reshape(6, 4)
        new_hidden, cell = fce.query_cell(torch.cat([inputs, read], -1), (hidden, cell))
        hidden = new_hidden + inputs  # h_k = ĥ_k + f'(x̂)
    torch.testing.assert_close(fce.embed_queries(queries, support), hidden.view(2, 3, 4))


# --- labels, tasks and inputs ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "config"), CONFIGS, ids=IDS)
def test_relabelling_classes_permutes_the_scores(name: str, config: dict[str, Any]) -> None:
    learner = _build(name, config, features=6).eval()
    episode = random_episode((6,), n_way=4, k_shot=2, q_query=2, batch_size=2, seed=5)
    permutation = torch.tensor([2, 0, 3, 1])  # class c is called permutation[c]
    with torch.no_grad():
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        relabelled = learner.predict(episode.support_x, permutation[episode.support_y], episode.query_x)
    torch.testing.assert_close(relabelled[..., permutation], scores)


@pytest.mark.parametrize(("name", "config"), [c for c in CONFIGS if not c[1].get("fce")], ids=IDS[:-1])
def test_support_order_does_not_matter_without_fce(name: str, config: dict[str, Any]) -> None:
    learner = _build(name, config, features=6).eval()
    episode = random_episode((6,), n_way=3, k_shot=3, batch_size=2, seed=6)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        shuffled = learner.predict(episode.support_x[:, order], episode.support_y[:, order], episode.query_x)
    torch.testing.assert_close(shuffled, scores)


@pytest.mark.parametrize(("name", "config"), CONFIGS, ids=IDS)
def test_tasks_of_a_meta_batch_do_not_interact(name: str, config: dict[str, Any]) -> None:
    learner = _build(name, config, features=6).eval()
    episode = random_episode((6,), n_way=3, k_shot=2, q_query=3, batch_size=3, seed=7)
    with torch.no_grad():
        batched = learner(episode).logits
        for task in range(3):
            alone = Episode(
                episode.support_x[task : task + 1], episode.support_y[task : task + 1],
                episode.query_x[task : task + 1], episode.query_y[task : task + 1], 3, 2,
            )
            torch.testing.assert_close(learner(alone).logits[0], batched[task])


@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_predict_takes_n_from_the_support_labels(name: str) -> None:
    learner = _learner(name, Flatten())
    episode = random_episode((4,), n_way=5, k_shot=1, q_query=2, batch_size=1, seed=8)
    scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
    assert scores.shape == (1, 10, 5)
    torch.testing.assert_close(scores, learner(episode).logits)


@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_bad_episodes_are_explained(name: str) -> None:
    learner = _learner(name, Flatten())
    episode = random_episode((4,), n_way=3, k_shot=1, q_query=1, batch_size=2, seed=9)
    missing = episode.support_y.clone()
    missing[1][missing[1] == 2] = 0
    with pytest.raises(ValueError, match="class 2 has no support item in task 1"):
        learner(Episode(episode.support_x, missing, episode.query_x, episode.query_y, 3, 1))
    with pytest.raises(ValueError, match=r"support labels must lie in 0\.\.1 \(n_way=2\)"):
        learner(Episode(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 2, 1))
    with pytest.raises(ValueError, match=r"support_y must be \[B, Ns\] = \(2, 3\)"):
        learner.predict(episode.support_x, episode.support_y[:, :2], episode.query_x)
    with pytest.raises(ValueError, match="same number of tasks and the same item shape"):
        learner.predict(episode.support_x, episode.support_y, episode.query_x[:, :, :3])
    with pytest.raises(ValueError, match="support labels must lie in 0"):
        learner.predict(episode.support_x, episode.support_y - 5, episode.query_x)
    with pytest.raises(ValueError, match="integer class labels"):
        learner.predict(episode.support_x, episode.support_y.float(), episode.query_x)
    with pytest.raises(ValueError, match=r"query labels must lie in 0\.\.2"):
        learner(Episode(episode.support_x, episode.support_y, episode.query_x, episode.query_y + 1, 3, 1))


def test_bad_configs_are_explained() -> None:
    with pytest.raises(ValueError, match="distance must be one of sqeuclidean, euclidean, cosine; got 'manhattan'"):
        PrototypicalNetworks(Flatten(), distance="manhattan")
    with pytest.raises(ValueError, match="scale must be positive"):
        PrototypicalNetworks(Flatten(), scale=0.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        MatchingNetworks(Flatten(), temperature=-1.0)
    with pytest.raises(ValueError, match="pass item_shape"):
        MatchingNetworks(Flatten(), fce=True)
    with pytest.raises(ValueError, match="steps >= 1"):
        MatchingNetworks(Flatten(), fce=True, fce_steps=0, item_shape=(4,))


def test_matching_scores_stay_finite_when_a_class_gets_no_attention() -> None:
    # At a low temperature the attention on the other class underflows to exactly 0.
    support_x = torch.tensor([[[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]])
    support_y = torch.tensor([[0, 1]])
    learner = _learner("matching", Flatten(), temperature=0.001)
    scores = learner.predict(support_x, support_y, support_x.clone())
    assert torch.isfinite(scores).all()
    assert scores[0, 0].argmax() == 0 and scores[0, 1].argmax() == 1


# --- learning --------------------------------------------------------------------------------

SIGNAL, NUISANCE = 8, 24


def _clusters(generator: torch.Generator, n_way: int = 5, k_shot: int = 1, q_query: int = 5, batch_size: int = 4) -> Episode:
    """Tasks of fresh Gaussian classes in 8 dims, hidden among 24 dims of larger noise.

    Nearest-prototype on the raw features is near chance (the noise dominates the distances);
    a learner that finds the 8 informative dimensions classifies almost perfectly.
    """
    centres = torch.randn(batch_size, n_way, SIGNAL, generator=generator)

    def part(per_class: int) -> tuple[Tensor, Tensor]:
        labels = torch.stack([torch.randperm(n_way * per_class, generator=generator) % n_way for _ in range(batch_size)])
        signal = centres.gather(1, labels[..., None].expand(-1, -1, SIGNAL))
        signal = signal + 0.3 * torch.randn(batch_size, n_way * per_class, SIGNAL, generator=generator)
        noise = 2.0 * torch.randn(batch_size, n_way * per_class, NUISANCE, generator=generator)
        return torch.cat([signal, noise], dim=-1), labels

    (support_x, support_y), (query_x, query_y) = part(k_shot), part(q_query)
    return Episode(support_x, support_y, query_x, query_y, n_way, k_shot)


def _accuracy(learner: Learner, episodes: list[Episode]) -> float:
    learner.eval()
    with torch.no_grad():
        return torch.stack([(learner(e).logits.argmax(-1) == e.query_y).float().mean() for e in episodes]).mean().item()


def _train(learner: Learner, episodes: Any, steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    learner.train()
    for _ in range(steps):
        loss = learner(next(episodes)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(("name", "config"), CONFIGS, ids=IDS)
def test_learner_learns_to_classify_new_gaussian_classes(name: str, config: dict[str, Any]) -> None:
    learner = _build(name, config, features=SIGNAL + NUISANCE)
    test_generator = torch.Generator().manual_seed(1)
    test = [_clusters(test_generator) for _ in range(20)]
    before = _accuracy(learner, test)
    train_generator = torch.Generator().manual_seed(2)
    _train(learner, iter(lambda: _clusters(train_generator), None), steps=150, lr=3e-3)
    after = _accuracy(learner, test)
    assert after > 0.75 and after > before + 0.3, f"5-way 1-shot accuracy {before:.2f} → {after:.2f} (chance 0.20)"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_learner_learns_glyphs(name: str) -> None:
    # Doubled jitter: on the default glyphs an untrained Conv4 already scores ~0.87 at 5-way
    # 1-shot, which leaves training too little to show; here it starts near 0.4.
    if "episodic" not in fewcore.list_components("sampler"):
        pytest.skip("the episodic sampler is not registered")
    torch.manual_seed(0)
    dataset = fewcore.create("dataset", "glyphs", alphabets=20, characters=10, drawings=10, jitter=2.0)
    learner = _learner(name, fewcore.create("backbone", "conv4", hidden_channels=32))

    def episodes(split: str, seed: int) -> Any:
        return iter(
            fewcore.create(
                "sampler", "episodic", dataset=dataset, split=split, n_way=5, k_shot=1, q_query=5, batch_size=2, seed=seed
            )
        )

    test = list(itertools.islice(episodes("test", 1), 10))
    before = _accuracy(learner, test)
    _train(learner, episodes("train", 0), steps=100, lr=1e-3)
    after = _accuracy(learner, test)
    assert after > 0.45 and after > before + 0.06, f"glyphs 5-way 1-shot test accuracy {before:.2f} → {after:.2f} (chance 0.20)"
