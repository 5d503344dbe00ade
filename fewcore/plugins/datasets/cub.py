"""CUB-200-2011 (Wah et al. 2011) with the class split of Chen et al. (ICLR 2019).

200 bird species, 11,788 photographs. The layout read is the official archive
``CUB_200_2011.tgz`` unpacked::

    ROOT/classes.txt              "<class id> <class name>", e.g. "1 001.Black_footed_Albatross"
    ROOT/images.txt               "<image id> <path under images/>"
    ROOT/image_class_labels.txt   "<image id> <class id>"
    ROOT/images/<path>

(ROOT may also be the folder that holds ``CUB_200_2011/``). The split is the rule of Chen, Liu,
Kira, Wang & Huang, "A Closer Look at Few-shot Classification" (ICLR 2019): with the class
names in sorted order (which for the official names, prefixed ``001.`` to ``200.``, is class-id
order) the classes at even positions 0, 2, 4, ... are for training, those at positions 1, 5,
9, ... for validation and those at 3, 7, 11, ... for testing — 100 / 50 / 50 classes. Only the
class split is theirs: they take all images of a class (no bounding-box crops), as here. Images
are resized to ``image_size`` × ``image_size`` without keeping their aspect ratio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from fewcore.paths import resolve_data_path
from fewcore.plugins.datasets._benchmark import Census, Expected, read_id_table, require_file
from fewcore.plugins.datasets._images import default_cache_dir, load_image_files
from fewcore.plugins.datasets._store import ClassStore

_LAYOUT = "the unpacked CUB_200_2011.tgz: classes.txt, images.txt, image_class_labels.txt and images/ in ROOT"


def _folder(root: str | os.PathLike[str]) -> Path:
    """The folder holding the index files: ``root`` or ``root/CUB_200_2011``."""
    root = resolve_data_path(root)
    nested = root / "CUB_200_2011"
    return nested if (nested / "images.txt").is_file() else root


def _class_files(folder: Path) -> dict[str, list[str]]:
    """class name → its image paths under ``images/``, in image-id order."""
    classes = read_id_table(require_file(folder / "classes.txt", "cub", _LAYOUT), "cub")
    paths = read_id_table(require_file(folder / "images.txt", "cub", _LAYOUT), "cub")
    labels = read_id_table(require_file(folder / "image_class_labels.txt", "cub", _LAYOUT), "cub")
    if set(paths) != set(labels):
        unlabelled = sorted(set(paths) ^ set(labels))[:5]
        raise ValueError(
            f"cub: images.txt and image_class_labels.txt list different image ids (e.g. {unlabelled}); "
            "every image needs one class label"
        )
    files: dict[str, list[str]] = {name: [] for name in classes.values()}
    for image_id in sorted(paths):
        label = labels[image_id]
        if not label.isdigit() or int(label) not in classes:
            raise ValueError(
                f"cub: image {image_id} has class {label!r} in image_class_labels.txt, which classes.txt does not list"
            )
        files[classes[int(label)]].append(paths[image_id])
    return files


def chen_split(class_names: list[str]) -> dict[str, list[str]]:
    """The class split of Chen et al. 2019 over ``class_names``: positions 0 mod 2 of the sorted
    names train, 1 mod 4 validate, 3 mod 4 test."""
    ordered = sorted(class_names)
    return {
        "train": ordered[0::2],
        "val": ordered[1::4],
        "test": ordered[3::4],
    }


class CUB(ClassStore):
    """CUB-200-2011 read from its official index files, with the 100 / 50 / 50 split of Chen et al.

    Class names are those of ``classes.txt`` (``"001.Black_footed_Albatross"``, ...). Items are
    ``[3, image_size, image_size]`` float32 in [0, 1].

    Args:
        root: the folder holding ``classes.txt``, ``images.txt``, ``image_class_labels.txt`` and
            ``images/`` (or the folder that holds ``CUB_200_2011/``); a relative path is looked up
            as :func:`fewcore.paths.resolve_data_path` says.
        image_size: H = W of the items (84 in the few-shot literature's ResNet-12 setting).
        cache_dir: where decoded images are cached (default ``$FEWCORE_CACHE`` or ``~/.cache/fewcore``).
        disk_cache: cache decoded images on disk; they are kept in memory for the process either way.

    Raises:
        FileNotFoundError: an index file or a listed image is missing.
        ValueError: an index file is malformed or the files disagree.
    """

    #: Chen et al. 2019 give class counts only; the 11,788 images are not split per figure
    expected_counts: ClassVar[dict[str, Expected]] = {
        "train": Expected(100, None),
        "val": Expected(50, None),
        "test": Expected(50, None),
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 84,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
    ) -> None:
        folder = _folder(root)
        files = _class_files(folder)
        empty = [name for name, paths in files.items() if not paths]
        if empty:
            raise ValueError(f"cub: classes {empty[:5]} of classes.txt have no images in image_class_labels.txt")
        cache = (cache_dir if cache_dir is not None else default_cache_dir()) if disk_cache else None
        items = load_image_files(folder / "images", files, image_size, channels=3, cache_dir=cache)
        super().__init__(items, chen_split(list(files)))

    @classmethod
    def survey(cls, root: str | os.PathLike[str]) -> Census:
        """split → class → number of its listed images present under ``images/``, nothing decoded."""
        folder = _folder(root)
        files = _class_files(folder)
        return {
            split: {name: sum((folder / "images" / path).is_file() for path in files[name]) for name in names}
            for split, names in chen_split(list(files)).items()
        }
