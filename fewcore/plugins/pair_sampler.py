"""Balanced, deterministic same/different pairs from an episode, for verification training.

A Siamese network (Koch et al. 2015) is trained on pairs labelled *same class* or *different
class*. Pairing every query with every support item of an N-way episode gives one same-class
pair for N − 1 different-class ones; :func:`balanced_pairs` instead pairs each query with the K
support items of its own class and with the K support items of exactly one other class, so
every task yields as many same as different pairs. The other class is chosen by position, not
at random: query ``i`` (0-based within its task) of class ``c`` is paired with class
``(c + 1 + i mod (N − 1)) mod N``, so the same episode always gives the same pairs and the
negatives of a task cycle through all other classes. A learner may choose each query's other
class itself instead (``other``), e.g. the class it currently confuses the query with most.

The pairs are drawn from ordinary N-way K-shot episodes (any sampler's), so a Siamese learner is
trained, validated and evaluated with the same episode stream and protocol as every other
learner.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Pairs(NamedTuple):
    """Index pairs into an episode's query and support sets.

    Attributes:
        query_index: ``[B, P]`` index of the query item of each pair.
        support_index: ``[B, P]`` index of the support item of each pair.
        same: ``[B, P]`` bool, True where both items have the same class (half of the pairs).
    """

    query_index: Tensor
    support_index: Tensor
    same: Tensor


def balanced_pairs(query_y: Tensor, support_y: Tensor, n_way: int, other: Tensor | None = None) -> Pairs:
    """Each query with the K support items of its class and the K of one other class.

    Args:
        query_y: ``[B, Nq]`` query labels in ``0..n_way-1``.
        support_y: ``[B, N*K]`` support labels, K items of each of the ``n_way`` classes, any order.
        n_way: N, at least 2.
        other: ``[B, Nq]`` the class each query's different-class pairs come from; None cycles
            through the other classes by query position (see the module notes).

    Returns:
        :class:`Pairs` with ``P = 2 · K · Nq`` pairs per task, ``K · Nq`` of them same-class.

    Raises:
        ValueError: fewer than 2 classes, classes with different numbers of support items, or
            an ``other`` class that is the query's own.
    """
    if n_way < 2:
        raise ValueError(f"same/different pairs need at least 2 classes per episode; got n_way={n_way}")
    batch, n_support = support_y.shape
    if n_support % n_way:
        raise ValueError(f"support_y has {n_support} items per task, not a multiple of n_way={n_way}")
    k_shot = n_support // n_way
    counts = torch.nn.functional.one_hot(support_y, n_way).sum(dim=1)  # [B, N]
    if not (counts == k_shot).all():
        raise ValueError(
            f"balanced pairs need the same number of support items in every class ({k_shot}); "
            f"got per-class counts {counts.tolist()}"
        )
    # Support indices grouped by class: class c owns columns c*K .. c*K + K - 1.
    by_class = support_y.argsort(dim=1, stable=True).view(batch, n_way, k_shot)
    n_query = query_y.shape[1]
    position = torch.arange(n_query, device=query_y.device)
    if other is None:
        other = (query_y + 1 + position % (n_way - 1)) % n_way  # [B, Nq], never the query's own class
    elif other.shape != query_y.shape:
        raise ValueError(f"other must be [B, Nq] = {tuple(query_y.shape)}, one class per query; got {tuple(other.shape)}")
    elif (other == query_y).any():
        raise ValueError("other must name a class other than the query's own for every query")
    tasks = torch.arange(batch, device=query_y.device)[:, None]
    positives = by_class[tasks, query_y]  # [B, Nq, K]
    negatives = by_class[tasks, other]  # [B, Nq, K]
    support_index = torch.cat([positives, negatives], dim=2).flatten(1)
    query_index = position[None, :, None].expand(batch, n_query, 2 * k_shot).flatten(1)
    same = torch.cat(
        [torch.ones_like(positives, dtype=torch.bool), torch.zeros_like(negatives, dtype=torch.bool)], dim=2
    ).flatten(1)
    return Pairs(query_index, support_index, same)
