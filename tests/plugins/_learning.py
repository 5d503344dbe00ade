"""A short meta-training run on the procedural glyphs, for "learns well above chance" tests."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import torch

import fewcore
from fewcore import Backbone, Learner


def glyph_accuracy_before_and_after(
    build: Callable[[Backbone, tuple[int, ...]], Learner],
    steps: int,
    lr: float,
    optimizer: str = "adam",
    hidden_channels: int = 16,
    jitter: float = 1.0,
) -> tuple[float, float]:
    """5-way 1-shot test accuracy of a learner on unseen glyph alphabets before and after training.

    16×16 glyphs (the smallest Conv4 takes) and a narrow Conv4 keep this a few seconds.

    Args:
        build: ``build(backbone, item_shape)`` → the learner to train.
        steps: meta-training steps on 2-task 5-way 1-shot meta-batches with 5 queries per class.
        lr: the meta-optimizer's learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (plain, no momentum).
        hidden_channels: Conv4's width.
        jitter: the glyphs' drawing jitter (2.0 makes untrained features much weaker).

    Returns:
        ``(before, after)`` mean accuracies over 5 fixed test meta-batches (chance is 0.2).
    """
    torch.manual_seed(0)
    dataset = fewcore.create("dataset", "glyphs", alphabets=20, characters=10, drawings=10, image_size=16, jitter=jitter)

    def episodes(split: str, seed: int) -> Any:
        return fewcore.create(
            "sampler", "episodic", dataset=dataset, split=split, n_way=5, k_shot=1, q_query=5, batch_size=2, seed=seed
        )

    learner = build(fewcore.create("backbone", "conv4", hidden_channels=hidden_channels), tuple(dataset.item_shape))
    test = list(itertools.islice(episodes("test", 1), 5))

    def accuracy() -> float:
        learner.eval()
        with torch.no_grad():
            hits = [(learner(e).logits.argmax(-1) == e.query_y).float().mean() for e in test]
        learner.train()
        return float(torch.stack(hits).mean())

    before = accuracy()
    if optimizer == "adam":
        meta_optimizer: torch.optim.Optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    else:
        meta_optimizer = torch.optim.SGD(learner.parameters(), lr=lr)
    for episode in itertools.islice(episodes("train", 0), steps):
        meta_optimizer.zero_grad()
        learner(episode).loss.backward()
        meta_optimizer.step()
    return before, accuracy()
