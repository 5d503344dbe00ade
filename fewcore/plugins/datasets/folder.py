"""Class folders: any ``root/<class>/*.{png,jpg,jpeg,bmp}`` tree (or a zip of one) as a dataset.

Every image is decoded once, resized, and kept as a uint8 tensor store — in memory for the
process and, by default, in a cache file on disk that is rebuilt when an image is added, removed
or changed — so that epochs never decode images again.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from torch import Tensor

from fewcore.plugins.datasets._images import default_cache_dir, load_image_tree
from fewcore.plugins.datasets._store import ClassStore, check_split, choose_splits


class Folder(ClassStore):
    """A dataset whose classes are the sub-folders of a folder.

    Class names are the sub-folder names. Items are ``[channels, H, W]`` float32 in [0, 1];
    images are resized to ``image_size`` without keeping their aspect ratio (the usual practice
    for few-shot benchmarks such as miniImageNet).

    Args:
        root: the folder (or zip) of class folders; or split → folder, each folder's classes
            forming that split (e.g. ``{"train": "data/train", "test": "data/test"}``).
        image_size: H = W, or (H, W), of the items.
        channels: 3 (RGB) or 1 (grayscale).
        invert: store ``1 - value``, for dark strokes on a light background (e.g. scans of
            handwriting) to become ink on zero.
        splits: split → class names, when ``root`` is one folder; classes listed nowhere are
            unused. ``None``: a seeded split by ``fractions``.
        fractions: (train, val, test) fractions of the classes, when ``splits`` is None.
        seed: seed of the split by fractions.
        cache_dir: where decoded images are cached (default ``$FEWCORE_CACHE`` or ``~/.cache/fewcore``).
        disk_cache: cache decoded images on disk; they are kept in memory for the process either way.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
        image_size: int | Sequence[int] = 84,
        channels: int = 3,
        invert: bool = False,
        splits: Mapping[str, Sequence[str]] | None = None,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
    ) -> None:
        cache = (cache_dir if cache_dir is not None else default_cache_dir()) if disk_cache else None
        size = image_size if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))

        def load(source: str | os.PathLike[str]) -> dict[str, Tensor]:
            return load_image_tree(source, depth=1, image_size=size, channels=channels, invert=invert, cache_dir=cache)

        if isinstance(root, Mapping):
            if splits is not None:
                raise ValueError("folder: with one root per split, the splits are the folders; do not also give splits=")
            items: dict[str, Tensor] = {}
            chosen: dict[str, list[str]] = {}
            for split, source in root.items():
                check_split(split)
                tree = load(source)
                shared = sorted(set(tree) & set(items))
                if shared:
                    raise ValueError(
                        f"folder: classes {shared[:3]} of the {split!r} folder {source} are also in another "
                        "split's folder; train/val/test classes must be disjoint"
                    )
                items.update(tree)
                chosen[split] = sorted(tree)
        else:
            items = load(root)
            chosen = choose_splits(sorted(items), splits, fractions, seed)
        super().__init__(items, chosen)
