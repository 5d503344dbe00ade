"""Class descriptions as data, and the sample-level split of the zero-shot protocol."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from fewcore import FewShotDataset


class AttributeTable:
    """One semantic vector per class (attributes or a word embedding), looked up by class name.

    A dataset that describes its classes keeps one of these as its ``attributes`` attribute;
    :func:`class_attributes` reads it.

    Args:
        names: ``[C]`` class names, as the dataset's ``classes()`` returns them (labels are
            compared as strings).
        matrix: ``[C, A]`` one row per class (tensor or numpy array, converted to float32).

    Raises:
        ValueError: the matrix is not 2-D, its rows do not match the names, or a name repeats.
    """

    def __init__(self, names: Sequence[Any], matrix: Tensor | np.ndarray) -> None:
        values = torch.as_tensor(matrix).float()
        keys = [str(name) for name in names]
        if values.ndim != 2:
            raise ValueError(f"class attributes must be a [classes, attributes] matrix; got shape {tuple(values.shape)}")
        if values.shape[0] != len(keys):
            raise ValueError(
                f"class attributes have {values.shape[0]} rows but {len(keys)} class names were given; "
                "give one row per class, in the order of the names"
            )
        if len(set(keys)) != len(keys):
            raise ValueError("class attribute names must be unique")
        if not torch.isfinite(values).all():
            raise ValueError("class attributes must be finite; found NaN or infinity")
        self._row = {name: i for i, name in enumerate(keys)}
        self.matrix = values

    @property
    def size(self) -> int:
        """A, the length of one class's vector."""
        return int(self.matrix.shape[1])

    def rows(self, class_names: Sequence[str]) -> Tensor:
        """``[len(class_names), A]`` the vectors of these classes, in this order.

        Raises:
            KeyError: a class has no vector (the message suggests the closest name).
        """
        missing = [name for name in class_names if name not in self._row]
        if missing:
            close = difflib.get_close_matches(missing[0], self._row, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"class {missing[0]!r} has no attribute vector ({len(missing)} such classes){hint}")
        return self.matrix[[self._row[name] for name in class_names]]


def class_attributes(dataset: FewShotDataset, class_names: Sequence[str]) -> Tensor:
    """``[len(class_names), A]`` the class descriptions a dataset carries.

    Raises:
        ValueError: the dataset carries none (it has no ``attributes`` table, or it is ``None``).
    """
    table = getattr(dataset, "attributes", None)
    if not isinstance(table, AttributeTable):
        raise ValueError(
            f"dataset {type(dataset).__name__} carries no class descriptions; zero-shot learning needs one "
            "vector per class (e.g. tensors(attributes=...), glyphs, or xian)"
        )
    return table.rows(class_names)


@dataclass(frozen=True)
class ZeroShotSplit:
    """The data of the zero-shot protocol of Xian et al. (2018), as tensors.

    Seen classes are indices ``0..S-1`` and unseen classes ``S..S+U-1`` of ``attributes``, so the
    generalized setting scores every class and the plain one only the last U.

    Attributes:
        train_x: ``[n_train, *item_shape]`` items of the seen classes to train on.
        train_y: ``[n_train]`` their classes in ``0..S-1``.
        seen_x: ``[n_seen, *item_shape]`` held-out items of the seen classes (GZSL's seen test set).
        seen_y: ``[n_seen]`` their classes in ``0..S-1``.
        unseen_x: ``[n_unseen, *item_shape]`` items of the unseen classes (never trained on).
        unseen_y: ``[n_unseen]`` their classes in ``S..S+U-1``.
        attributes: ``[S+U, A]`` one description per class, seen classes first.
        class_names: ``[S+U]`` the class names, in the order of ``attributes``.
        n_seen_classes: S.
    """

    train_x: Tensor
    train_y: Tensor
    seen_x: Tensor
    seen_y: Tensor
    unseen_x: Tensor
    unseen_y: Tensor
    attributes: Tensor
    class_names: list[str]
    n_seen_classes: int

    def __post_init__(self) -> None:
        s = self.n_seen_classes
        for name, labels, low, high in (
            ("train_y", self.train_y, 0, s),
            ("seen_y", self.seen_y, 0, s),
            ("unseen_y", self.unseen_y, s, len(self.class_names)),
        ):
            if labels.numel() == 0:
                raise ValueError(f"zero-shot split: {name} is empty; every part of the protocol needs items")
            if int(labels.min()) < low or int(labels.max()) >= high:
                raise ValueError(f"zero-shot split: {name} must lie in {low}..{high - 1}")
        if self.attributes.shape[0] != len(self.class_names):
            raise ValueError("zero-shot split: one attribute row per class name is required")


def zero_shot_split(
    dataset: FewShotDataset,
    seen_splits: Sequence[str] = ("train", "val"),
    unseen_split: str = "test",
    holdout: float = 0.2,
    seed: int = 0,
) -> ZeroShotSplit:
    """The zero-shot protocol's data from a dataset that carries class descriptions.

    A dataset that knows its own sample-level protocol (``zero_shot_split()``, as Xian et al.'s
    proposed splits do) is asked for it; otherwise the classes of ``seen_splits`` are seen, those
    of ``unseen_split`` unseen, and a seeded ``holdout`` fraction of each seen class's items (at
    least one) is held out as the seen test set of the generalized setting.

    Args:
        dataset: a dataset whose ``attributes`` describe its classes.
        seen_splits: the splits whose classes are trained on.
        unseen_split: the split whose classes are only described.
        holdout: fraction of each seen class's items kept for testing, in (0, 1).
        seed: seed of the hold-out draw.
    """
    own = getattr(dataset, "zero_shot_split", None)
    if callable(own):
        split = own()
        if not isinstance(split, ZeroShotSplit):
            raise TypeError(f"{type(dataset).__name__}.zero_shot_split() must return a ZeroShotSplit")
        return split
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must lie strictly between 0 and 1; got {holdout}")
    seen = [name for split in seen_splits for name in dataset.classes(split)]
    unseen = dataset.classes(unseen_split)
    if not seen or not unseen:
        raise ValueError(
            f"zero-shot split: needs seen classes (splits {list(seen_splits)}: {len(seen)}) and unseen classes "
            f"(split {unseen_split!r}: {len(unseen)})"
        )
    names = seen + unseen
    attributes = class_attributes(dataset, names)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y, seen_x, seen_y, unseen_x, unseen_y = [], [], [], [], [], []
    for index, name in enumerate(seen):
        items = dataset.items(name)
        if len(items) < 2:
            raise ValueError(f"zero-shot split: seen class {name!r} has {len(items)} item; it needs 2 to train and test")
        order = torch.randperm(len(items), generator=gen)
        n_test = min(len(items) - 1, max(1, round(holdout * len(items))))
        seen_x.append(items[order[:n_test]])
        train_x.append(items[order[n_test:]])
        seen_y.append(torch.full((n_test,), index))
        train_y.append(torch.full((len(items) - n_test,), index))
    for index, name in enumerate(unseen, start=len(seen)):
        items = dataset.items(name)
        unseen_x.append(items)
        unseen_y.append(torch.full((len(items),), index))
    return ZeroShotSplit(
        train_x=torch.cat(train_x),
        train_y=torch.cat(train_y),
        seen_x=torch.cat(seen_x),
        seen_y=torch.cat(seen_y),
        unseen_x=torch.cat(unseen_x),
        unseen_y=torch.cat(unseen_y),
        attributes=attributes,
        class_names=names,
        n_seen_classes=len(seen),
    )
