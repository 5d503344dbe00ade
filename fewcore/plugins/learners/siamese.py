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

Training pairs are :func:`fewcore.plugins.pair_sampler.balanced_pairs` of each episode: every
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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput, ops
from fewcore.plugins.learners._episode import check_episode, check_task_batch, embed_tasks
from fewcore.plugins.pair_sampler import balanced_pairs

HEADS = ("contrastive", "koch")
NEGATIVES = ("cycle", "hardest")


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
        input_shape: item shape, to size the Koch head; ``None`` uses the backbone's
            ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: str = "contrastive",
        margin: float = 1.0,
        negatives: str = "cycle",
        input_shape: Sequence[int] | None = None,
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
            shape = tuple(input_shape) if input_shape is not None else tuple(backbone.example_input_shape)
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
