"""Prototypical Networks (Snell, Swersky and Zemel 2017, "Prototypical Networks for Few-shot Learning").

Each class k of a task is represented by the mean embedding of its support items, its prototype

    c_k = (1 / |S_k|) Σ_{(x_i, y_i) ∈ S_k} f_φ(x_i),

and a query x is classified by a softmax over negative distances to the prototypes (eq. 2)

    p_φ(y = k | x) = exp(-d(f_φ(x), c_k)) / Σ_k' exp(-d(f_φ(x), c_k')),

trained by minimising -log p_φ(y = k | x) over the queries of each episode. ``d`` is the squared
euclidean distance of the paper; the euclidean and cosine distances are options. A fixed ``scale``
multiplies the logits, ``-scale · d``: the cosine distance ``1 - cos`` is bounded and needs a
scale of about 10 for a confident softmax (metric scaling, Oreshkin et al. 2018, TADAM). Since a
softmax ignores constants, the cosine logits are computed as ``scale · cos``. Distances and
similarities come from :func:`fewcore.ops.pairwise_distance`.

Labels are arbitrary, shuffled class indices: the prototypes are computed with a label one-hot
matrix ``Y [M, N]`` as ``C = diag(1 / Yᵀ1) · Yᵀ F``, never from positions in the support set.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from fewcore import Backbone, Episode, Learner, LearnerOutput, ops
from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks

#: the distances a Prototypical Network may use (``fewcore.ops.pairwise_distance`` metrics)
DISTANCES = ("sqeuclidean", "euclidean", "cosine")


def prototypes(support_embeddings: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """Class means of support embeddings.

    Args:
        support_embeddings: ``[B, Ns, D]``.
        support_y: ``[B, Ns]`` labels in ``0..N-1`` (any order; every class present).
        n_way: N.

    Returns:
        ``[B, N, D]`` prototypes, row k the mean of the embeddings labelled k.
    """
    one_hot = class_one_hot(support_y, n_way).to(support_embeddings.dtype)  # [B, Ns, N]
    sums = one_hot.transpose(1, 2) @ support_embeddings  # [B, N, D]
    return sums / one_hot.sum(dim=1).unsqueeze(-1)


class PrototypicalNetworks(Learner):
    """Nearest-prototype classification with a learned embedding.

    Args:
        backbone: the embedding network ``f_φ``.
        distance: ``"sqeuclidean"`` (the paper's), ``"euclidean"`` or ``"cosine"``.
        scale: logits are ``-scale · d(f_φ(x), c_k)``.
        item_shape: the shape of one item (the engine passes the dataset's to every learner);
            unused, prototypes have the backbone's embedding size whatever the items.
    """

    def __init__(
        self,
        backbone: Backbone,
        distance: str = "sqeuclidean",
        scale: float = 1.0,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        self.backbone = backbone
        self.distance = distance
        self.scale = scale

    def _scores(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        support, query = embed_tasks(self.backbone, support_x, query_x)
        # ops' "cosine" is a similarity, the others are distances.
        value = ops.pairwise_distance(query, prototypes(support, support_y, n_way), self.distance)
        return self.scale * value if self.distance == "cosine" else -self.scale * value

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores (negative scaled distances to the prototypes).

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` scores; a softmax over the last dim gives ``p_φ(y | x)``.
        """
        n_way = check_task_batch(support_x, support_y, query_x)
        return self._scores(support_x, support_y, query_x, n_way)

    def forward(self, episode: Episode) -> LearnerOutput:
        """Query logits ``[B, N*Q, N]`` and the mean query cross-entropy."""
        n_way = check_episode(episode)
        logits = self._scores(episode.support_x, episode.support_y, episode.query_x, n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        return LearnerOutput(logits=logits, loss=loss)
