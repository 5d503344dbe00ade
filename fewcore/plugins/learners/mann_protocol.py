"""MANN's evaluation protocol: accuracy by presentation number (Santoro et al. 2016, table 1).

:func:`accuracy_by_instance` gives the accuracy at the 1st, 2nd, 5th, 10th presentation of a
class within a sequence, and :func:`evaluate_by_instance` measures it over a stream of episodes
(K + Q ≥ 10 items per class for the 10th presentation). Kept apart from the model
(:mod:`fewcore.plugins.learners.mann`), which does not need the engine's statistics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from fewcore import Episode
from fewcore.engine import mean_ci95
from fewcore.plugins.learners.mann import MANN, episode_sequences


def accuracy_by_instance(
    logits: Tensor, labels: Tensor, positions: Sequence[int] = (1, 2, 5, 10)
) -> dict[int, Tensor]:
    """Accuracy at the k-th presentation of a class, per sequence (Santoro et al., table 1).

    Args:
        logits: ``[B, T, N]`` per-step class scores.
        labels: ``[B, T]`` the true labels.
        positions: presentation numbers k (1-based).

    Returns:
        k → ``[B_k]`` accuracies over the k-th presentations in each of the B_k sequences that
        have one; positions that no sequence reaches are left out.
    """
    occurrence = (labels[:, :, None] == labels[:, None, :]).tril().sum(dim=2)  # [B, T]: k of each step
    correct = (logits.argmax(dim=-1) == labels).float()
    result = {}
    for k in positions:
        at_k = occurrence == k
        reached = at_k.any(dim=1)
        if reached.any():
            result[k] = (correct * at_k).sum(dim=1)[reached] / at_k.sum(dim=1)[reached]
    return result


@dataclass(frozen=True)
class InstanceAccuracy:
    """Accuracy at one presentation number over many episodes.

    Attributes:
        position: k, the presentation number of a class within its sequence (1-based).
        accuracy: mean over episodes of the accuracy at the k-th presentations.
        ci95: 95% confidence half-width over episodes, ``1.96 · σ / √n``.
        episodes: n.
    """

    position: int
    accuracy: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        return f"instance {self.position}: {100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.episodes} episodes)"


def evaluate_by_instance(
    learner: MANN,
    episodes: Iterable[Episode],
    count: int,
    positions: Sequence[int] = (1, 2, 5, 10),
    seed: int = 0,
) -> list[InstanceAccuracy]:
    """Accuracy by presentation number over the first ``count`` episodes of a stream.

    Each episode's items are shown as one random-order sequence (seeded by ``seed``), as in
    training, with the learner in eval mode and without gradients.

    Args:
        learner: a trained :class:`MANN`.
        episodes: episode batches of one shape (e.g. a sampler over the test split), K + Q
            items per class.
        count: how many episodes (tasks) to use.
        positions: presentation numbers k.
        seed: seeds the presentation orders.

    Returns:
        One :class:`InstanceAccuracy` per position that the episodes reach, in order.
    """
    generator = torch.Generator().manual_seed(seed)
    per_episode: dict[int, list[Tensor]] = {k: [] for k in positions}
    seen = 0
    was_training = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            # The predicate reads the running count on purpose: it stops the stream once enough are seen.
            for episode in itertools.takewhile(lambda _: seen < count, episodes):  # noqa: B023
                x, y, _ = episode_sequences(episode, generator)
                take = min(count - seen, y.shape[0])
                logits = learner.sequence_logits(x[:take], y[:take], episode.n_way)
                for k, accuracies in accuracy_by_instance(logits, y[:take], positions).items():
                    per_episode[k].append(accuracies)
                seen += take
    finally:
        learner.train(was_training)
    if seen < count:
        raise ValueError(f"the episode stream ended after {seen} episodes; {count} were asked for")
    results = []
    for k, parts in per_episode.items():
        if parts:
            accuracies = torch.cat(parts)
            results.append(InstanceAccuracy(k, *mean_ci95(accuracies.tolist()), len(accuracies)))
    return results
