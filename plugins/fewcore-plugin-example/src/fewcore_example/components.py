"""A linear backbone and a nearest-neighbour learner.

Nearest-neighbour classification (as in the one-shot baselines of Vinyals et al. 2016): a query
scores each class by its distance to the *closest* support item of that class,
``logit_c(q) = -min_{j : y_j = c} d(f(q), f(s_j))``, with ``d`` the squared euclidean distance
computed by fewcore's fused ``pairwise_distance`` op. Training minimises cross-entropy over these
logits, which pulls each query towards its nearest same-class support item.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import ops


class FlatLinear(fewcore.Backbone):
    """Flattens each input and maps it linearly to ``out_features`` dimensions.

    Args:
        in_features: size of one flattened input (e.g. 784 for a 1×28×28 image).
        out_features: embedding size.
    """

    def __init__(self, in_features: int = 784, out_features: int = 64) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

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
        backbone: the embedding network.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def _embed(self, x: Tensor) -> Tensor:
        batch, items = x.shape[:2]
        return self.backbone(x.flatten(0, 1)).view(batch, items, -1)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        distances = ops.pairwise_distance(self._embed(query_x), self._embed(support_x), "sqeuclidean")
        n_way = int(support_y.max()) + 1
        # Mask out other classes' support items with +inf, then take the minimum per class.
        same_class = F.one_hot(support_y, n_way).bool()  # [B, Ns, N]
        masked = distances.unsqueeze(-1).masked_fill(~same_class.unsqueeze(1), float("inf"))
        return -masked.amin(dim=2)

    def forward(self, episode: fewcore.Episode) -> fewcore.LearnerOutput:
        logits = self.predict(episode.support_x, episode.support_y, episode.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        return fewcore.LearnerOutput(logits=logits, loss=loss)
