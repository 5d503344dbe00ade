"""In-memory data as a dataset: the answer to "how do I use my own data".

Give images or pre-extracted feature vectors with one label each — as tensors, numpy arrays, or
a file (``.pt`` holding ``{"x": ..., "y": ...}``, read with ``weights_only=True``, or ``.npz``
holding arrays ``x`` and ``y``) — and choose which labels form which split.

Given only ``x`` and ``y``, the classes (not the items) are split 60/20/20 into train,
validation and test by a seeded shuffle (``fractions=(0.6, 0.2, 0.2)``, ``seed=0``), and the
split is logged as a warning (shown by default) so that it is never applied unseen; pass
``splits`` to choose the classes of each split yourself.

Classes may carry descriptions for zero-shot learning (:mod:`fewcore.zeroshot`): ``attributes``,
a ``[C, A]`` class-attribute matrix whose row i describes the i-th of the distinct labels in
sorted order (so with labels 0..C-1, row c describes label c), or a mapping label → vector.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fewcore.plugins.datasets._store import ClassStore, choose_splits
from fewcore.zeroshot import AttributeTable

logger = logging.getLogger(__name__)


def _load(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(x, y)`` from a ``.pt`` or ``.npz`` file."""
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"tensors: {file} does not exist")
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as arrays:
            if not {"x", "y"} <= set(arrays.files):
                raise ValueError(f"tensors: {file} must hold arrays named x and y; it holds {arrays.files}")
            return arrays["x"], arrays["y"]
    saved = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(saved, Mapping) or not {"x", "y"} <= set(saved):
        found = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
        raise ValueError(f'tensors: {file} must hold a dict {{"x": ..., "y": ...}}; it holds {found}')
    return saved["x"], saved["y"]


def _attribute_table(
    attributes: Tensor | np.ndarray | Sequence[Sequence[float]] | Mapping[int | str, Any], labels: list[Any]
) -> AttributeTable:
    """The class descriptions as a table; ``labels`` are the distinct labels in sorted order."""
    if isinstance(attributes, Mapping):
        keys = list(attributes)
        missing = sorted({str(v) for v in labels} - {str(k) for k in keys})
        if missing:
            raise ValueError(f"tensors: attributes describe no vector for labels {missing[:5]}; give one per class")
        return AttributeTable(keys, torch.stack([torch.as_tensor(attributes[k]).float() for k in keys]))
    matrix = torch.as_tensor(np.asarray(attributes)).float()
    if matrix.ndim != 2 or matrix.shape[0] != len(labels):
        raise ValueError(
            f"tensors: attributes must be a [classes, A] matrix with one row per distinct label ({len(labels)}, "
            f"in sorted order); got shape {tuple(matrix.shape)}"
        )
    return AttributeTable(labels, matrix)


class Tensors(ClassStore):
    """A dataset from items and labels held in memory.

    Class names are the labels as strings (``3`` → ``"3"``). Float items are used as they are;
    uint8 items are images with values 0..255, returned as float32 in [0, 1].

    Args:
        x: ``[n, *item_shape]`` items: images ``[n, C, H, W]`` or features ``[n, D]`` (tensor
            or numpy array).
        y: ``[n]`` labels: integers or strings.
        path: instead of ``x`` and ``y``, a ``.pt`` or ``.npz`` file holding them.
        splits: split → labels of its classes; classes listed nowhere are unused. ``None``: a
            seeded split of the classes by ``fractions`` (60/20/20 by default), logged as a warning.
        fractions: (train, val, test) fractions of the classes, when ``splits`` is None.
        seed: seed of the split by fractions.
        attributes: class descriptions, kept as ``self.attributes``: a ``[C, A]`` matrix, row i
            for the i-th distinct label in sorted order, or a mapping label → ``[A]`` vector.
            ``None``: the classes are not described (``self.attributes`` is ``None``).

    Example:
        >>> ds = fewcore.create("dataset", "tensors", x=features, y=labels,
        ...                     splits={"train": range(0, 64), "test": range(64, 100)})
    """

    def __init__(
        self,
        x: Tensor | np.ndarray | None = None,
        y: Tensor | np.ndarray | Sequence[int | str] | None = None,
        path: str | os.PathLike[str] | None = None,
        splits: Mapping[str, Sequence[int | str]] | None = None,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        attributes: Tensor | np.ndarray | Sequence[Sequence[float]] | Mapping[int | str, Any] | None = None,
    ) -> None:
        if path is not None:
            if x is not None or y is not None:
                raise ValueError("tensors: give either x and y, or path, not both")
            x, y = _load(path)
        if x is None or y is None:
            raise ValueError("tensors: give the items x and their labels y (or a path to a file holding them)")
        items = torch.as_tensor(x)
        if items.dtype != torch.uint8:
            items = items.float()
        raw_labels = y.tolist() if isinstance(y, (Tensor, np.ndarray)) else list(y)
        labels = [str(v) for v in raw_labels]
        if items.ndim < 2:
            raise ValueError(f"tensors: x must be [n, *item_shape] with at least 2 dims; got shape {tuple(items.shape)}")
        if len(labels) != items.shape[0]:
            raise ValueError(f"tensors: x has {items.shape[0]} items but y has {len(labels)} labels")
        by_class: dict[str, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        per_class = {label: items[torch.tensor(indices)] for label, indices in by_class.items()}
        chosen = choose_splits(sorted(per_class), splits, fractions, seed)
        if splits is None:
            logger.warning(
                "tensors: no splits given; split the %d classes by fractions %s (seed %d) into %s "
                "(pass splits= to choose them)",
                len(per_class),
                "/".join(f"{f:g}" for f in fractions),
                seed,
                ", ".join(f"{split} {len(names)}" for split, names in chosen.items()),
            )
        super().__init__(per_class, chosen)
        self.attributes = None if attributes is None else _attribute_table(attributes, sorted(set(raw_labels)))
