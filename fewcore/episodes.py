"""Episode helpers for learner authors: input checks, label one-hots and batched embedding.

The built-in learners use these, and a plugin's learner can too (they are public API)::

    from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks

    class NearestCentroid(fewcore.Learner):
        def predict(self, support_x, support_y, query_x):
            n_way = check_task_batch(support_x, support_y, query_x)
            support, query = embed_tasks(self.backbone, support_x, query_x)
            one_hot = class_one_hot(support_y, n_way)  # [B, Ns, N]
            centroids = one_hot.transpose(1, 2) @ support / one_hot.sum(1)[..., None]
            return -torch.cdist(query, centroids)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore._types import Backbone, Episode

__all__ = ["check_episode", "check_task_batch", "class_one_hot", "embed_tasks"]


def check_task_batch(support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int | None = None) -> int:
    """Validate a batch of labelled support sets and queries; return N, the number of classes.

    Args:
        support_x: ``[B, Ns, *item_shape]`` support items.
        support_y: ``[B, Ns]`` integer labels in ``0..N-1``, in any order.
        query_x: ``[B, Nq, *item_shape]`` query items.
        n_way: N when known (``episode.n_way``); otherwise ``max(support_y) + 1``.

    Returns:
        N. Every class ``0..N-1`` has at least one support item in every task.

    Raises:
        ValueError: the shapes disagree, a label is out of range, or a class has no support item.
    """
    if support_y.dim() != 2 or support_x.dim() < 3 or query_x.dim() < 3:
        # The likeliest slip is one task without its batch dimension, whose support size would
        # otherwise be read as the number of tasks.
        raise ValueError(
            "expected a batch of tasks: support_x [B, Ns, *item_shape], support_y [B, Ns] and query_x "
            f"[B, Nq, *item_shape]; got support_x {tuple(support_x.shape)}, support_y {tuple(support_y.shape)} and "
            f"query_x {tuple(query_x.shape)}. For one task, add the batch dimension: "
            "predict(support_x[None], support_y[None], query_x[None])"
        )
    if support_y.shape != support_x.shape[:2]:
        raise ValueError(
            f"support_y must be [B, Ns] = {tuple(support_x.shape[:2])} to match support_x "
            f"{tuple(support_x.shape)}; got {tuple(support_y.shape)}"
        )
    if query_x.shape[0] != support_x.shape[0] or query_x.shape[2:] != support_x.shape[2:]:
        raise ValueError(
            f"query_x {tuple(query_x.shape)} must hold the same number of tasks and the same item shape "
            f"as support_x {tuple(support_x.shape)}"
        )
    if support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
        raise ValueError(f"support_y must hold integer class labels; got dtype {support_y.dtype}")
    if support_y.numel() == 0:
        raise ValueError("the support set is empty")
    if n_way is None:
        n_way = int(support_y.max()) + 1
    if n_way < 1:
        raise ValueError(f"support labels must lie in 0..N-1; got labels up to {int(support_y.max())}")
    # One host sync on the happy path: the details are worked out only to explain a failure.
    in_range = (support_y >= 0) & (support_y < n_way)
    counts = class_one_hot(support_y.clamp(0, n_way - 1), n_way).sum(dim=1)  # [B, N]
    if bool(in_range.all() & (counts > 0).all()):
        return n_way
    if not bool(in_range.all()):
        raise ValueError(
            f"support labels must lie in 0..{n_way - 1} (n_way={n_way}); "
            f"got labels {int(support_y.min())}..{int(support_y.max())}"
        )
    task, label = (int(i) for i in (counts == 0).nonzero()[0])
    raise ValueError(f"class {label} has no support item in task {task}; every class 0..{n_way - 1} needs at least one")


def check_episode(episode: Episode) -> int:
    """:func:`check_task_batch` for an episode, plus its query labels; returns ``episode.n_way``."""
    n_way = check_task_batch(episode.support_x, episode.support_y, episode.query_x, episode.n_way)
    if episode.query_y.shape != episode.query_x.shape[:2]:
        raise ValueError(
            f"query_y must be [B, Nq] = {tuple(episode.query_x.shape[:2])}; got {tuple(episode.query_y.shape)}"
        )
    if bool(((episode.query_y < 0) | (episode.query_y >= n_way)).any()):
        raise ValueError(
            f"query labels must lie in 0..{n_way - 1} (n_way={n_way}); "
            f"got {int(episode.query_y.min())}..{int(episode.query_y.max())}"
        )
    return n_way


def class_one_hot(labels: Tensor, n_way: int) -> Tensor:
    """``[B, M]`` labels → ``[B, M, N]`` float one-hot rows (the label → class assignment matrix)."""
    return F.one_hot(labels.long(), n_way).float()


def embed_tasks(
    backbone: nn.Module, support_x: Tensor, query_x: Tensor, feature_maps: bool = False
) -> tuple[Tensor, Tensor]:
    """Embed support and query items of every task in one backbone call.

    One call (rather than one per set) puts support and query items in the same batch-norm batch,
    as in the reference implementations, and costs one launch sequence instead of two.

    Args:
        backbone: maps ``[n, *item_shape]`` to ``[n, D]``; with ``feature_maps``, a
            :class:`fewcore.Backbone` whose ``forward_features`` maps ``[n, *item_shape]`` to
            ``[n, *feature_shape]`` (e.g. ``[n, C, H', W']``).
        support_x: ``[B, Ns, *item_shape]``.
        query_x: ``[B, Nq, *item_shape]``.
        feature_maps: return the backbone's feature maps (``forward_features``) instead of its
            flat embeddings, for learners that compare items spatially (Relation Networks).

    Returns:
        ``([B, Ns, D], [B, Nq, D])`` embeddings, or ``([B, Ns, *feature_shape], [B, Nq,
        *feature_shape])`` feature maps.
    """
    batch, n_support = support_x.shape[:2]
    items = torch.cat([support_x, query_x], dim=1).flatten(0, 1)  # task by task: [B * (Ns + Nq), ...]
    if feature_maps:
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"feature_maps=True needs a fewcore.Backbone (with forward_features); got {type(backbone).__name__}"
            )
        features = backbone.forward_features(items)
    else:
        features = backbone(items)
        if features.dim() != 2:
            raise ValueError(
                f"the backbone must map [n, *item_shape] to [n, D] embeddings; it mapped {tuple(items.shape)} "
                f"to {tuple(features.shape)}"
            )
    if features.shape[0] != items.shape[0]:
        raise ValueError(
            f"the backbone must give one output per item; it mapped {tuple(items.shape)} to {tuple(features.shape)}"
        )
    features = features.view(batch, -1, *features.shape[1:])
    return features[:, :n_support], features[:, n_support:]
