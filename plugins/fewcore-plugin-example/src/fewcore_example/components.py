"""A linear backbone and a nearest-neighbour learner.

Nearest-neighbour classification (as in the one-shot baselines of Vinyals et al. 2016): a query
scores each class by its distance to the *closest* support item of that class,
``logit_c(q) = -min_{j : y_j = c} d(f(q), f(s_j))``, with ``d`` the squared euclidean distance
computed by fewcore's fused ``pairwise_distance`` op. Training minimises cross-entropy over these
logits, which pulls each query towards its nearest same-class support item.

Written on fewcore's public API only (``fewcore``, ``fewcore.ops``, ``fewcore.episodes``), as any
third-party plugin would be.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import ops
from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks


class FlatLinear(fewcore.Backbone):
    """Flattens each input and maps it linearly to ``out_features`` dimensions.

    Args:
        in_features: size of one flattened input (e.g. 784 for a 1×28×28 image); by default
            taken from ``item_shape``, or 784 without one.
        out_features: embedding size.
        item_shape: the shape of one item; fewcore's engine passes the dataset's.
    """

    def __init__(
        self, in_features: int | None = None, out_features: int = 64, item_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = 784 if item_shape is None else math.prod(item_shape)
        self.linear = nn.Linear(in_features, out_features)
        self.embedding_size(tuple(item_shape) if item_shape is not None else (in_features,))

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, *input_shape]`` → ``[batch, out_features]``."""
        return self.linear(x.flatten(1))

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        if math.prod(input_shape) != self.linear.in_features:
            raise ValueError(
                f"flat-linear expects inputs of {self.linear.in_features} values, "
                f"got shape {tuple(input_shape)} ({math.prod(input_shape)} values)"
            )
        return self.linear.out_features

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """A flat vector of ``in_features`` values (fewcore's conformance checks feed it)."""
        return (self.linear.in_features,)


class NearestNeighbour(fewcore.Learner):
    """Scores classes by the distance from each query to its nearest support item of that class.

    Args:
        backbone: the embedding network (kept as ``.backbone``, where fewcore looks for it).
        item_shape: the shape of one item, passed by fewcore's engine; unused, the scores have
            no parameters of their own.
    """

    def __init__(self, backbone: fewcore.Backbone, item_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone

    def _scores(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        support, query = embed_tasks(self.backbone, support_x, query_x)
        distances = ops.pairwise_distance(query, support, "sqeuclidean")  # [B, Nq, Ns]
        # Mask out other classes' support items with +inf, then take the minimum per class.
        same_class = class_one_hot(support_y, n_way).bool()  # [B, Ns, N]
        masked = distances.unsqueeze(-1).masked_fill(~same_class.unsqueeze(1), float("inf"))
        return -masked.amin(dim=2)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores ``[B, Nq, N]``: minus the distance to the nearest support item of each class."""
        return self._scores(support_x, support_y, query_x, check_task_batch(support_x, support_y, query_x))

    def forward(self, episode: fewcore.Episode) -> fewcore.LearnerOutput:
        """Query logits ``[B, N*Q, N]`` and their cross-entropy."""
        logits = self._scores(episode.support_x, episode.support_y, episode.query_x, check_episode(episode))
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        return fewcore.LearnerOutput(logits=logits, loss=loss)
