"""The in-memory class store every built-in dataset is, and the split helpers they share."""

from __future__ import annotations

import difflib
from typing import Mapping, Sequence

import torch
from torch import Tensor

from fewcore import FewShotDataset

#: the split names a dataset answers for
SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> None:
    """Raise a ValueError unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def partition(names: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Shuffle ``names`` with ``seed`` and cut them into consecutive parts of the given fractions.

    The result does not depend on the order of ``names`` (they are sorted first), so the same
    names and seed always give the same parts.

    Args:
        names: the names to split; duplicates are an error.
        fractions: one fraction per part, each in [0, 1], summing to at most 1 (what remains
            is left out).
        seed: the shuffle's seed.

    Returns:
        One list of names per fraction; part ``i`` holds ``round(n * (f_0 + ... + f_i))`` minus
        the names of the parts before it.
    """
    if len(set(names)) != len(names):
        raise ValueError("names to partition must be unique")
    if any(not 0.0 <= f <= 1.0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
        raise ValueError(f"split fractions must lie in [0, 1] and sum to at most 1; got {list(fractions)}")
    ordered = sorted(names)
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [ordered[i] for i in order]
    parts: list[list[str]] = []
    start, total = 0, 0.0
    for fraction in fractions:
        total += fraction
        stop = min(len(shuffled), round(len(shuffled) * total))
        parts.append(shuffled[start:stop])
        start = stop
    return parts


def choose_splits(
    class_names: Sequence[str],
    splits: Mapping[str, Sequence[object]] | None,
    fractions: Sequence[float],
    seed: int,
) -> dict[str, list[str]]:
    """The class names of each split: given by name, or a seeded split by fractions.

    Args:
        class_names: every class.
        splits: split → class names (labels are compared as strings); ``None`` to use
            ``fractions`` instead.
        fractions: (train, val, test) fractions of the classes, used when ``splits`` is None.
        seed: the seed of the split by fractions.

    Raises:
        ValueError: a split name or class name is unknown, or ``fractions`` is not 3 numbers.
    """
    if splits is not None:
        known = set(class_names)
        chosen: dict[str, list[str]] = {}
        for split, names in splits.items():
            check_split(split)
            if isinstance(names, str):
                raise ValueError(f"split {split!r} must list class names; got the string {names!r}")
            chosen[split] = [str(n) for n in names]
            unknown = [n for n in chosen[split] if n not in known]
            if unknown:
                raise ValueError(
                    f"split {split!r} names classes that do not exist: {unknown[:5]}; "
                    f"there are {len(known)} classes, e.g. {sorted(known)[:5]}"
                )
        return chosen
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test); got {list(fractions)}")
    return dict(zip(SPLITS, partition(list(class_names), fractions, seed)))


class ClassStore(FewShotDataset):
    """A dataset held in memory: one tensor of items per class, and disjoint named splits.

    Items stored as ``uint8`` are images with values 0..255 and are returned as float32 in
    [0, 1]; float items are returned as they are. Classes that no split lists are kept out of
    every split.

    Args:
        items: class name → ``[n_items, *item_shape]`` tensor; every class has the same item shape.
        splits: split name (``"train"``, ``"val"``, ``"test"``) → its class names; a split left
            out is empty.

    Raises:
        ValueError: a split name is unknown, a split lists a class that has no items, a class is
            in two splits, or item shapes differ between classes.
    """

    def __init__(self, items: Mapping[str, Tensor], splits: Mapping[str, Sequence[str]]) -> None:
        if not items:
            raise ValueError("a dataset needs at least one class; none was given")
        shapes = {name: tuple(t.shape[1:]) for name, t in items.items()}
        first_name, first_shape = next(iter(shapes.items()))
        for name, shape in shapes.items():
            if shape != first_shape:
                raise ValueError(
                    f"every class must have items of one shape; class {first_name!r} has {first_shape} "
                    f"but class {name!r} has {shape}"
                )
        for split in splits:
            check_split(split)
        owner: dict[str, str] = {}
        for split, names in splits.items():
            for name in names:
                if name not in items:
                    raise ValueError(f"split {split!r} lists class {name!r}, which has no items")
                if name in owner:
                    raise ValueError(
                        f"class {name!r} is in both the {owner[name]!r} and the {split!r} split; "
                        "splits must be disjoint so that evaluation uses unseen classes"
                    )
                owner[name] = split
        self._items = dict(items)
        self._splits = {split: list(splits.get(split, ())) for split in SPLITS}
        self._item_shape = first_shape

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 28, 28)``."""
        return self._item_shape

    def classes(self, split: str) -> list[str]:
        """Class names of ``split`` (``"train"``, ``"val"`` or ``"test"``), in a fixed order."""
        check_split(split)
        return list(self._splits[split])

    def items(self, class_name: str) -> Tensor:
        """All items of one class, ``[n_items, *item_shape]`` float32."""
        stored = self._items.get(class_name)
        if stored is None:
            close = difflib.get_close_matches(class_name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown class {class_name!r} ({len(self._items)} classes){hint}")
        if stored.dtype == torch.uint8:
            return stored.float().div_(255.0)
        return stored

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={len(names)}" for split, names in self._splits.items())
        return f"{type(self).__name__}(classes: {sizes}; item_shape={self._item_shape})"
