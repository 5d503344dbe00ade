"""The typed objects that flow between components: episodes, learner outputs, base classes."""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import Any, Iterator

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Episode:
    """A meta-batch of B N-way K-shot tasks with Q queries per class.

    Attributes:
        support_x: ``[B, N*K, *item_shape]`` support items.
        support_y: ``[B, N*K]`` int64 labels in ``0..N-1``, in shuffled order (never positional).
        query_x: ``[B, N*Q, *item_shape]`` query items.
        query_y: ``[B, N*Q]`` int64 labels in ``0..N-1``.
        n_way: N, classes per task.
        k_shot: K, support items per class.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int
    k_shot: int

    @property
    def batch_size(self) -> int:
        """B, the number of tasks."""
        return self.support_x.shape[0]

    @property
    def q_query(self) -> int:
        """Q, query items per class."""
        return self.query_x.shape[1] // self.n_way

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        """The same episode with every tensor on ``device``."""
        moved: dict[str, Any] = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Episode(**moved)


@dataclass(frozen=True)
class LearnerOutput:
    """What a learner returns for an episode batch.

    Attributes:
        logits: ``[B, N*Q, N]`` class scores for every query.
        loss: scalar training loss.
    """

    logits: Tensor
    loss: Tensor


class Backbone(nn.Module, abc.ABC):
    """Maps ``[batch, *input_shape]`` inputs to ``[batch, E]`` embeddings.

    A backbone's factory is called as ``factory(item_shape=..., **config)``: the engine passes the
    dataset's item shape (e.g. ``(1, 28, 28)``) so that no config has to repeat it. A backbone
    that keeps spatial structure also hands out its feature maps (:meth:`forward_features`,
    :meth:`feature_shape`), for learners that compare items spatially (Relation Networks).
    """

    @abc.abstractmethod
    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        """E, the embedding size for inputs of shape ``input_shape`` (without the batch dim)."""

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``[batch, *feature_shape(x.shape[1:])]`` (e.g. ``[batch, C, H', W']``) of
        inputs ``[batch, *input_shape]``, before they are pooled or flattened into embeddings.

        Raises:
            NotImplementedError: this backbone has no feature maps (the default).
        """
        raise self._no_feature_maps()

    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one item's feature maps (without the batch dim) for inputs of ``input_shape``.

        Raises:
            NotImplementedError: this backbone has no feature maps (the default).
        """
        raise self._no_feature_maps()

    def _no_feature_maps(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} gives only flat embeddings; a learner that needs feature maps "
            "needs a backbone that implements forward_features and feature_shape (e.g. conv4, resnet12)"
        )

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """An input shape (without the batch dim) this backbone accepts as built, e.g. ``(1, 28, 28)``.

        The registry-driven conformance checks (:mod:`fewcore.testing`) feed inputs of this shape;
        override it so that a registered backbone can be tested without configuration.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not declare example_input_shape; override the property "
            "to return an input shape (without the batch dim) it accepts as built"
        )


class Learner(nn.Module, abc.ABC):
    """A few-shot method: an episode batch in, query logits and a loss out.

    A learner's factory is called as ``factory(backbone=..., item_shape=..., **config)``, with
    ``item_shape`` the dataset's item shape (to size heads); it keeps ``backbone`` as its
    ``.backbone`` attribute, where the engine and :mod:`fewcore.testing` find it.
    """

    @abc.abstractmethod
    def forward(self, episode: Episode) -> LearnerOutput:
        """Query logits ``[B, N*Q, N]`` and the loss for ``episode``."""

    @abc.abstractmethod
    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores ``[B, Nq, N]`` for queries ``[B, Nq, ...]`` given a labelled support set
        ``[B, Ns, ...]`` / ``[B, Ns]`` (labels ``0..N-1``); higher means more likely."""


class FewShotDataset(abc.ABC):
    """Maps class → items and knows its class splits."""

    @property
    @abc.abstractmethod
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 28, 28)``."""

    @abc.abstractmethod
    def classes(self, split: str) -> list[str]:
        """Class names of ``split`` (``"train"``, ``"val"`` or ``"test"``); splits are disjoint."""

    @abc.abstractmethod
    def items(self, class_name: str) -> Tensor:
        """All items of one class, ``[n_items, *item_shape]`` float32."""


class EpisodeSampler(abc.ABC):
    """Yields :class:`Episode` batches; deterministic for a seed, resumable from its state."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Episode]: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The position in the episode stream (to resume exactly where a run stopped)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
