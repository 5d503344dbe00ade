"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales 2018, "Learning to Compare:
Relation Network for Few-Shot Learning").

An embedding module ``f_φ`` (the backbone's feature maps, not flat embeddings) maps every item to
a ``[C, H, W]`` feature map. The feature map of class k is the element-wise sum over its support
items, ``f_φ(S_k) = Σ_{x_i ∈ S_k} f_φ(x_i)`` (for K = 1, the single item's map), as in the paper,
or their mean (``class_pooling = "mean"``): the paper trains and tests with the same K, and a
relation module trained on 1-shot sums sees K-times larger maps in a K-shot test (measured on the
glyphs: 75% at 5-way 1-shot, 26% at 5-way 5-shot with sums; docs/RESULTS.md). A learned
relation module ``g_ϕ`` scores every (class, query) pair from the depth-wise concatenation
``C(·, ·)`` of their feature maps (eq. 1 and 2):

    r_{k,j} = g_ϕ(C(f_φ(S_k), f_φ(x_j))) ∈ [0, 1],

and both modules are trained by regressing the scores onto the match indicator (eq. 3):

    φ, ϕ ← argmin Σ_j Σ_k (r_{k,j} − 1(y_j == k))²

(here the mean over pairs, which only rescales the learning rate). A query is classified by its
highest relation score; the scores are what ``predict`` and ``forward`` return as class scores.

``g_ϕ`` is the paper's: two blocks of [3×3 conv with ``relation_channels`` filters, batch norm,
ReLU, 2×2 max-pool], then a ReLU layer of ``relation_hidden`` units and a sigmoid unit. Its
convolutions use padding 1 and a block pools only while its input is at least 2×2, so it accepts
any feature-map size (the paper's Omniglot embedding gives 5×5 maps).

The first convolution is linear in its input, so on a concatenation it splits into a part for the
class map and a part for the query map: ``W ∗ C(a, b) = W_a ∗ a + W_b ∗ b``. Each part is
computed once per class and once per query and the results are added for every pair, instead of
convolving all N·Nq concatenations (exactly the same values).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks


class RelationModule(nn.Module):
    """``g_ϕ``: a relation score in ``[0, 1]`` for pairs of ``[C, H, W]`` feature maps.

    Args:
        feature_shape: ``(C, H, W)`` of one item's feature map.
        channels: filters of the two convolutional blocks (64 in the paper).
        hidden: units of the fully connected ReLU layer (8 in the paper).
    """

    def __init__(self, feature_shape: Sequence[int], channels: int = 64, hidden: int = 8) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ValueError(
                f"Relation Networks compare [C, H, W] feature maps; the backbone's feature maps have shape "
                f"{tuple(feature_shape)}"
            )
        in_channels, height, width = feature_shape
        self.in_channels = in_channels
        self.first = nn.Conv2d(2 * in_channels, channels, kernel_size=3, padding=1)
        self.first_norm = nn.BatchNorm2d(channels)
        self.second = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.first_pool = height >= 2 and width >= 2
        height, width = (height // 2, width // 2) if self.first_pool else (height, width)
        self.second_pool = height >= 2 and width >= 2
        height, width = (height // 2, width // 2) if self.second_pool else (height, width)
        self.score = nn.Sequential(nn.Linear(channels * height * width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def _blocks_after_first_conv(self, h: Tensor) -> Tensor:
        """``[n, channels, H, W]`` first-convolution outputs → ``[n]`` scores."""
        h = F.relu(self.first_norm(h))
        if self.first_pool:
            h = F.max_pool2d(h, 2)
        h = self.second(h)
        if self.second_pool:
            h = F.max_pool2d(h, 2)
        return torch.sigmoid(self.score(h.flatten(1))).squeeze(-1)

    def forward(self, pairs: Tensor) -> Tensor:
        """Scores of concatenated pairs: ``[n, 2C, H, W]`` → ``[n]`` (the definition, eq. 1)."""
        return self._blocks_after_first_conv(self.first(pairs))

    def score_all_pairs(self, classes: Tensor, queries: Tensor) -> Tensor:
        """Scores of every (class, query) pair of every task, the first convolution split in two.

        Args:
            classes: ``[B, N, C, H, W]`` class feature maps.
            queries: ``[B, Nq, C, H, W]`` query feature maps.

        Returns:
            ``[B, Nq, N]`` relation scores, equal to ``forward`` on each concatenation
            ``C(classes[b, k], queries[b, j])``.
        """
        batch, n_way = classes.shape[:2]
        n_query = queries.shape[1]
        weight_class, weight_query = self.first.weight.split(self.in_channels, dim=1)
        class_part = F.conv2d(classes.flatten(0, 1), weight_class, self.first.bias, padding=1)
        query_part = F.conv2d(queries.flatten(0, 1), weight_query, padding=1)
        # [B, Nq, N, channels, H, W]: every query's part plus every class's part
        h = query_part.unflatten(0, (batch, n_query))[:, :, None] + class_part.unflatten(0, (batch, n_way))[:, None]
        return self._blocks_after_first_conv(h.flatten(0, 2)).view(batch, n_query, n_way)


class RelationNetworks(Learner):
    """Few-shot classification by a learned relation score between feature maps.

    Args:
        backbone: the embedding module ``f_φ``; it must hand out ``[C, H, W]`` feature maps
            (``forward_features`` / ``feature_shape``).
        relation_channels: filters of the relation module's convolutions.
        relation_hidden: units of its fully connected layer.
        class_pooling: a class's feature map is the ``"sum"`` (the paper) or the ``"mean"`` of
            its support items' maps.
        item_shape: the shape of one item, to size the relation module; ``None`` uses the
            backbone's ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        relation_channels: int = 64,
        relation_hidden: int = 8,
        class_pooling: Literal["sum", "mean"] = "sum",
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("relation_channels", relation_channels), ("relation_hidden", relation_hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if class_pooling not in ("sum", "mean"):
            raise ValueError(f"class_pooling must be 'sum' or 'mean'; got {class_pooling!r}")
        self.class_pooling = class_pooling
        shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
        self.backbone = backbone
        self.relation = RelationModule(backbone.feature_shape(shape), relation_channels, relation_hidden)

    def _scores(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        support, query = embed_tasks(self.backbone, support_x, query_x, feature_maps=True)
        one_hot = class_one_hot(support_y, n_way).to(support.dtype)  # [B, Ns, N]
        if self.class_pooling == "mean":
            one_hot = one_hot / one_hot.sum(dim=1, keepdim=True)
        classes = (one_hot.transpose(1, 2) @ support.flatten(2)).view(*one_hot.shape[::2], *support.shape[2:])
        return self.relation.score_all_pairs(classes, query)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Relation scores of every query with every class.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` scores in ``[0, 1]``.
        """
        n_way = check_task_batch(support_x, support_y, query_x)
        return self._scores(support_x, support_y, query_x, n_way)

    def forward(self, episode: Episode) -> LearnerOutput:
        """Query relation scores ``[B, N*Q, N]`` and their mean squared error against the one-hot labels."""
        n_way = check_episode(episode)
        scores = self._scores(episode.support_x, episode.support_y, episode.query_x, n_way)
        loss = F.mse_loss(scores, class_one_hot(episode.query_y, n_way).to(scores.dtype))
        return LearnerOutput(logits=scores, loss=loss)
