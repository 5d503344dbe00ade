"""Siamese networks (Koch, Zemel and Salakhutdinov 2015, "Siamese Neural Networks for One-shot
Image Recognition"; contrastive loss of Hadsell, Chopra and LeCun 2006, "Dimensionality
Reduction by Learning an Invariant Mapping").

Twin networks with shared weights embed the two items of a pair, ``h1 = f(x1)``, ``h2 = f(x2)``
(one backbone, applied to both). Two ways to score and train a pair:

* ``head = "contrastive"`` (Hadsell et al.): the euclidean distance ``D = ‖h1 − h2‖`` and

      L(x1, x2, y) = (1 − y) · D² + y · max(0, m − D)²,

  **with y = 1 for a pair of DIFFERENT classes and y = 0 for a pair of the SAME class** (y is a
  dissimilarity label, as in Hadsell et al.; some sources use the opposite convention). Same-class
  pairs are pulled together, different-class pairs pushed at least the margin m apart.
* ``head = "koch"`` (Koch et al., eq. 1-2): a weighted L1 verification head

      p(same | x1, x2) = σ(Σ_j α_j |h1_j − h2_j| + b),

  trained with binary cross-entropy, **target t = 1 for a SAME-class pair** (t = 1 − y).

Training pairs are :func:`balanced_pairs` of each episode: every
query with the K support items of its class and the K of one other class, as many same as
different pairs. The other class cycles through the episode's classes (``negatives = "cycle"``)
or is, per query, the class the model currently scores highest after the query's own
(``negatives = "hardest"``, hard-negative mining as in FaceNet, Schroff et al. 2015): with N − 1
candidate classes, a fixed cycle mostly pairs a query with classes it is already far from,
while the test asks for it to beat every class at once. One-shot N-way classification (Koch et
al., section 4.2): each query goes to the class of the support item it is most similar to; the
score of class k is the largest similarity to a support item of class k (``−D``, or the head's
logit), so the logits are ``[B, Nq, N]`` for any K. Distances come from
:func:`fewcore.ops.pairwise_distance`; the weighted L1 head has no fused op and is computed with
broadcasting.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput, ops
from fewcore.episodes import check_episode, check_task_batch, embed_tasks

HEADS = ("contrastive", "koch")
NEGATIVES = ("cycle", "hardest")


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

    Pairing every query with every support item would give one same-class pair for N − 1
    different-class ones; these pairs are balanced in every task. Without ``other``, query ``i``
    (0-based within its task) of class ``c`` is paired with class ``(c + 1 + i mod (N − 1)) mod N``:
    deterministic, and the negatives of a task cycle through all other classes.

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


def contrastive_loss(distance: Tensor, different: Tensor, margin: float) -> Tensor:
    """Mean of ``(1 − y) · D² + y · max(0, m − D)²`` over pairs.

    Args:
        distance: ``[...]`` euclidean distances D ≥ 0 of the pairs.
        different: ``[...]`` y: 1 (or True) where the pair's items have different classes.
        margin: m > 0.

    Returns:
        Scalar loss.
    """
    y = different.to(distance.dtype)
    return ((1 - y) * distance.square() + y * (margin - distance).clamp(min=0).square()).mean()


def class_scores(similarity: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """Nearest-neighbour class scores: the best similarity to any support item of each class.

    Args:
        similarity: ``[B, Nq, Ns]`` query–support similarities (higher is more alike).
        support_y: ``[B, Ns]`` labels in ``0..n_way-1``, every class present.
        n_way: N.

    Returns:
        ``[B, Nq, N]`` scores, entry k the maximum similarity to the support items labelled k.
    """
    index = support_y[:, None, :].expand_as(similarity)
    empty = similarity.new_full((*similarity.shape[:2], n_way), float("-inf"))
    return empty.scatter_reduce(2, index, similarity, reduce="amax", include_self=True)


class SiameseNetwork(Learner):
    """Twin-network verification, used as a nearest-neighbour one-shot classifier.

    Args:
        backbone: the shared twin network f.
        head: ``"contrastive"`` (euclidean distance, contrastive loss) or ``"koch"`` (weighted
            L1 + sigmoid, binary cross-entropy).
        margin: m of the contrastive loss.
        negatives: how each query's different-class pairs are chosen: ``"cycle"`` (by position)
            or ``"hardest"`` (the other class it is most similar to; see the module notes).
        item_shape: the shape of one item, to size the Koch head (the engine passes the
            dataset's); ``None`` uses the backbone's ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: str = "contrastive",
        margin: float = 1.0,
        negatives: str = "cycle",
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
        if margin <= 0:
            raise ValueError(f"margin must be positive; got {margin}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}; got {negatives!r}")
        self.backbone = backbone
        self.head = head
        self.margin = float(margin)
        self.negatives = negatives
        if head == "koch":
            shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
            self.verifier = nn.Linear(backbone.embedding_size(shape), 1)

    def similarity(self, query: Tensor, support: Tensor) -> Tensor:
        """Similarity of every query–support pair: ``−D`` or the Koch head's logit.

        Args:
            query: ``[B, Nq, E]`` embeddings.
            support: ``[B, Ns, E]`` embeddings.

        Returns:
            ``[B, Nq, Ns]``.
        """
        if self.head == "contrastive":
            return -ops.pairwise_distance(query, support, "euclidean")
        l1 = (query[:, :, None, :] - support[:, None, :, :]).abs()
        return self.verifier(l1).squeeze(-1)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Nearest-support-item class scores.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` scores (best similarity to a support item of each class).
        """
        n_way = check_task_batch(support_x, support_y, query_x)
        support, query = embed_tasks(self.backbone, support_x, query_x)
        return class_scores(self.similarity(query, support), support_y, n_way)

    def forward(self, episode: Episode) -> LearnerOutput:
        """Class scores ``[B, N*Q, N]`` and the verification loss of the episode's balanced pairs."""
        n_way = check_episode(episode)
        support, query = embed_tasks(self.backbone, episode.support_x, episode.query_x)
        similarity = self.similarity(query, support)  # [B, Nq, Ns]
        scores = class_scores(similarity, episode.support_y, n_way)
        other = None
        if self.negatives == "hardest":
            own = F.one_hot(episode.query_y, n_way).bool()
            other = scores.detach().masked_fill(own, float("-inf")).argmax(dim=-1)
        pairs = balanced_pairs(episode.query_y, episode.support_y, n_way, other)
        tasks = torch.arange(similarity.shape[0], device=similarity.device)[:, None]
        pair_similarity = similarity[tasks, pairs.query_index, pairs.support_index]  # [B, P]
        if self.head == "contrastive":
            loss = contrastive_loss(-pair_similarity, ~pairs.same, self.margin)
        else:
            loss = F.binary_cross_entropy_with_logits(pair_similarity, pairs.same.to(pair_similarity.dtype))
        return LearnerOutput(logits=scores, loss=loss)
