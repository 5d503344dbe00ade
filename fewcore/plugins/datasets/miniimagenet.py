"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (ICLR 2017).

100 ImageNet classes, 600 images each; the split files of Ravi & Larochelle assign 64 classes to
training, 16 to validation and 20 to testing. The layout read is theirs::

    ROOT/train.csv   ROOT/val.csv   ROOT/test.csv   ROOT/images/<filename>

where each CSV has the header ``filename,label`` and one row per image (``label`` is the
ImageNet synset, e.g. ``n01532829``). The split is whatever the CSV files say; ``fewcore data
check miniimagenet ROOT`` compares it with the published sizes. Images are resized to
``image_size`` × ``image_size`` (84 in the literature) and decoded once (see ``folder``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import ClassVar

from fewcore.paths import resolve_data_path
from fewcore.plugins.datasets._benchmark import Census, Expected, require_file
from fewcore.plugins.datasets._images import default_cache_dir, load_image_files
from fewcore.plugins.datasets._store import SPLITS, ClassStore

_LAYOUT = "the Ravi & Larochelle layout ROOT/{train,val,test}.csv (header 'filename,label') beside ROOT/images/"


def _read_split(root: Path, split: str) -> dict[str, list[str]]:
    """label → image file names listed in ``root/<split>.csv``, in row order."""
    path = require_file(root / f"{split}.csv", "miniimagenet", _LAYOUT)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip() for cell in rows[0]] != ["filename", "label"]:
        header = rows[0] if rows else "nothing (the file is empty)"
        raise ValueError(f"miniimagenet: {path} starts with {header}; expected the header 'filename,label'")
    files: dict[str, list[str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"miniimagenet: row {number} of {path} is {row}; expected 'filename,label'")
        filename, label = (cell.strip() for cell in row)
        files.setdefault(label, []).append(filename)
    return files


class MiniImageNet(ClassStore):
    """miniImageNet read from the split CSVs of Ravi & Larochelle and their ``images/`` folder.

    Class names are the synsets of the CSVs' ``label`` column. Items are ``[3, image_size,
    image_size]`` float32 in [0, 1].

    Args:
        root: the folder holding ``train.csv``, ``val.csv``, ``test.csv`` and ``images/``
            (a relative path is looked up as :func:`fewcore.paths.resolve_data_path` says).
        image_size: H = W of the items (84 in the literature).
        cache_dir: where decoded images are cached (default ``$FEWCORE_CACHE`` or ``~/.cache/fewcore``).
        disk_cache: cache decoded images on disk; they are kept in memory for the process either way.

    Raises:
        FileNotFoundError: a CSV file or a listed image is missing.
        ValueError: a CSV file is not ``filename,label`` rows, or a class is in two splits.
    """

    #: 64 / 16 / 20 classes of 600 images (Ravi & Larochelle 2017)
    expected_counts: ClassVar[dict[str, Expected]] = {
        "train": Expected(64, 64 * 600),
        "val": Expected(16, 16 * 600),
        "test": Expected(20, 20 * 600),
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 84,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
    ) -> None:
        root = resolve_data_path(root)
        listed = {split: _read_split(root, split) for split in SPLITS}
        images = root / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"miniimagenet: {images} does not exist; expected {_LAYOUT}")
        files = {label: names for split_files in listed.values() for label, names in split_files.items()}
        cache = (cache_dir if cache_dir is not None else default_cache_dir()) if disk_cache else None
        items = load_image_files(images, files, image_size, channels=3, cache_dir=cache)
        super().__init__(items, {split: sorted(split_files) for split, split_files in listed.items()})

    @classmethod
    def survey(cls, root: str | os.PathLike[str]) -> Census:
        """split → class → number of its listed images present in ``root/images``, nothing decoded."""
        root = resolve_data_path(root)
        return {
            split: {
                label: sum((root / "images" / name).is_file() for name in names)
                for label, names in _read_split(root, split).items()
            }
            for split in SPLITS
        }
