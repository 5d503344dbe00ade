"""The "proposed split" files of Xian et al. (2018), "Zero-Shot Learning — A Comprehensive
Evaluation of the Good, the Bad and the Ugly" (TPAMI), as a dataset.

AwA2, CUB, SUN, aPY and AwA1 are distributed in that work's layout, one folder per benchmark
holding two MATLAB files:

- ``res101.mat``: ``features`` ``[2048, N]`` ResNet-101 features of the N images (one column per
  image) and ``labels`` ``[N, 1]``, each image's class, counted from 1.
- ``att_splits.mat``: ``att`` ``[A, C]`` one description (column) per class;
  ``trainval_loc``, ``test_seen_loc``, ``test_unseen_loc`` and, for tuning, ``train_loc`` and
  ``val_loc``: image numbers counted from 1; optionally ``allclasses_names``.

The zero-shot protocol (:meth:`Xian.zero_shot_split`) is exactly the files': train on
``trainval_loc``, test seen classes on ``test_seen_loc`` and unseen classes on
``test_unseen_loc``. As an episodic dataset, the ``train`` and ``val`` splits are the classes
of ``train_loc`` and ``val_loc`` (or, without them, ``train`` is the classes of
``trainval_loc``) and ``test`` is the unseen classes; items are the ``[2048]`` feature vectors.
Reading the files needs scipy (``pip install fewcore[zsl]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewcore.paths import resolve_data_path
from fewcore.plugins.datasets._store import ClassStore
from fewcore.zeroshot import AttributeTable, ZeroShotSplit

#: the arrays of att_splits.mat the protocol needs
_LOCATIONS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


def _loadmat(path: Path, needed: tuple[str, ...]) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise ImportError("xian: reading .mat files needs scipy; install it with `pip install fewcore[zsl]`") from exc
    if not path.is_file():
        raise FileNotFoundError(f"xian: {path} does not exist; the benchmark folder must hold res101.mat and att_splits.mat")
    arrays = loadmat(str(path))
    missing = [name for name in needed if name not in arrays]
    if missing:
        found = sorted(k for k in arrays if not k.startswith("__"))
        raise ValueError(f"xian: {path.name} lacks {missing}; it holds {found} (is it Xian et al.'s proposed-split file?)")
    return arrays


def _locations(arrays: dict[str, Any], name: str, n_images: int) -> np.ndarray:
    """0-based image indices from a 1-based ``*_loc`` array."""
    loc = np.asarray(arrays[name]).astype(np.int64).ravel() - 1
    if loc.size == 0:
        raise ValueError(f"xian: {name} is empty; it must list the image numbers (1..{n_images}) of its part")
    if loc.min() < 0 or loc.max() >= n_images:
        raise ValueError(f"xian: {name} must hold image numbers 1..{n_images} (counted from 1); got {loc.min() + 1}..{loc.max() + 1}")
    return loc


def _names(arrays: dict[str, Any], n_classes: int) -> list[str]:
    """Class names from ``allclasses_names`` (a MATLAB cell array of strings), else ``class001``..."""
    if "allclasses_names" not in arrays:
        return [f"class{c + 1:03d}" for c in range(n_classes)]
    names = [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(arrays["allclasses_names"]).ravel()]
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f"xian: allclasses_names must name the {n_classes} classes of att once each; it has {len(names)} names")
    return names


class Xian(ClassStore):
    """Pre-extracted features and class attributes in Xian et al.'s proposed-split files.

    Args:
        root: the benchmark's folder (e.g. ``xlsa17/data/AWA2``), resolved by
            :func:`fewcore.paths.resolve_data_path` (relative to ``--data-dir``/``FEWCORE_DATA``).
        features: the features file inside ``root``.
        splits: the attributes-and-splits file inside ``root``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file lacks an array or its shapes or numbers disagree.
    """

    def __init__(self, root: str | os.PathLike[str], features: str = "res101.mat", splits: str = "att_splits.mat") -> None:
        folder = resolve_data_path(root)
        data = _loadmat(folder / features, ("features", "labels"))
        meta = _loadmat(folder / splits, ("att", *_LOCATIONS))
        x = torch.as_tensor(np.asarray(data["features"], dtype=np.float32)).T.contiguous()  # [N, 2048]
        labels = np.asarray(data["labels"]).astype(np.int64).ravel() - 1
        att = np.asarray(meta["att"], dtype=np.float32)  # [A, C]
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"xian: features has {x.shape[0]} columns (images) but labels has {labels.shape[0]} entries")
        if labels.min() < 0 or labels.max() >= att.shape[1]:
            raise ValueError(f"xian: labels must be classes 1..{att.shape[1]} (att has one column per class)")
        names = _names(meta, att.shape[1])
        self._x, self._labels, self._names = x, torch.as_tensor(labels), names
        self._loc = {name: _locations(meta, name, x.shape[0]) for name in _LOCATIONS}
        seen = np.unique(labels[self._loc["trainval_loc"]])
        unseen = np.unique(labels[self._loc["test_unseen_loc"]])
        if np.intersect1d(seen, unseen).size:
            raise ValueError("xian: test_unseen_loc holds images of classes in trainval_loc; unseen classes must be unseen")
        if np.setdiff1d(np.unique(labels[self._loc["test_seen_loc"]]), seen).size:
            raise ValueError("xian: test_seen_loc holds images of classes absent from trainval_loc")
        self._seen, self._unseen = seen.tolist(), unseen.tolist()
        if "train_loc" in meta and "val_loc" in meta:
            train = np.unique(labels[_locations(meta, "train_loc", x.shape[0])]).tolist()
            val = np.unique(labels[_locations(meta, "val_loc", x.shape[0])]).tolist()
        else:
            train, val = self._seen, []
        items = {names[c]: x[torch.as_tensor(labels == c)] for c in range(len(names)) if (labels == c).any()}
        by_split = {"train": train, "val": val, "test": self._unseen}
        super().__init__(items, {split: [names[c] for c in classes] for split, classes in by_split.items()})
        self.attributes = AttributeTable(names, att.T)

    def zero_shot_split(self) -> ZeroShotSplit:
        """The files' own protocol: train on trainval_loc, test on test_seen_loc and test_unseen_loc."""
        order = self._seen + self._unseen
        index = torch.full((len(self._names),), -1, dtype=torch.long)
        index[order] = torch.arange(len(order))

        def part(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            loc = torch.as_tensor(self._loc[name])
            return self._x[loc], index[self._labels[loc]]

        train_x, train_y = part("trainval_loc")
        seen_x, seen_y = part("test_seen_loc")
        unseen_x, unseen_y = part("test_unseen_loc")
        names = [self._names[c] for c in order]
        return ZeroShotSplit(
            train_x=train_x,
            train_y=train_y,
            seen_x=seen_x,
            seen_y=seen_y,
            unseen_x=unseen_x,
            unseen_y=unseen_y,
            attributes=self.attributes.rows(names),
            class_names=names,
            n_seen_classes=len(self._seen),
        )
