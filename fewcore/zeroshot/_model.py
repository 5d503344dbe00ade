"""What every zero-shot model does: fit on seen classes, then score items against any descriptions."""

from __future__ import annotations

import abc

from torch import Tensor, nn


def check_fit(x: Tensor, y: Tensor, attributes: Tensor) -> None:
    """Raise a ValueError unless ``x [m, ...]``, ``y [m]`` in 0..z-1 and ``attributes [z, a]`` agree."""
    if y.ndim != 1 or x.shape[0] != y.shape[0] or y.numel() == 0:
        raise ValueError(f"zero-shot fit: need x [m, ...] and y [m] with m >= 1; got {tuple(x.shape)} and {tuple(y.shape)}")
    if attributes.ndim != 2:
        raise ValueError(f"zero-shot fit: attributes must be [classes, a]; got {tuple(attributes.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= attributes.shape[0]:
        raise ValueError(f"zero-shot fit: labels must lie in 0..{attributes.shape[0] - 1}, one attribute row per class")


class ZeroShotModel(nn.Module, abc.ABC):
    """A compatibility ``F(x, s)`` between items and class descriptions.

    ``fit`` learns from items of the seen classes and those classes' descriptions; ``scores``
    then ranks any classes, seen or not, given only their descriptions.
    """

    @abc.abstractmethod
    def fit(self, x: Tensor, y: Tensor, attributes: Tensor) -> None:
        """Learn from ``x [m, *item_shape]``, labels ``y [m]`` in 0..z-1 and ``attributes [z, a]``."""

    @abc.abstractmethod
    def scores(self, x: Tensor, attributes: Tensor) -> Tensor:
        """``[n, C]`` compatibility of each item of ``x [n, *item_shape]`` with each row of ``attributes [C, a]``."""
