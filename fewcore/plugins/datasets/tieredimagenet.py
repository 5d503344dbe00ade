"""tieredImageNet (Ren et al., ICLR 2018) in its class-folder form.

608 ImageNet classes grouped by 34 high-level categories, the categories split 20 / 6 / 8 so
that training, validation and test classes are semantically apart: 351 / 97 / 160 classes with
448,695 / 124,261 / 206,209 images. The layout read is one folder of synset folders per split::

    ROOT/train/<synset>/*.jpg   ROOT/val/<synset>/*.jpg   ROOT/test/<synset>/*.jpg

(the form the pickled release is usually converted to); the split is the folders'. Images are
resized to ``image_size`` × ``image_size`` (84 in the literature) and decoded once. Like every
built-in dataset the decoded images are held in memory: at 84×84 the whole of tieredImageNet
takes about 16.5 GB (779,165 images × 21,168 bytes), and as much again in the disk cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from fewcore.paths import resolve_data_path
from fewcore.plugins.datasets._benchmark import Census, Expected
from fewcore.plugins.datasets._images import _folder_files
from fewcore.plugins.datasets._store import SPLITS
from fewcore.plugins.datasets.folder import Folder


def _split_folders(root: str | os.PathLike[str]) -> dict[str, Path]:
    root = resolve_data_path(root)
    folders = {split: root / split for split in SPLITS}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"tieredimagenet: {', '.join(missing)} not found; expected ROOT/train, ROOT/val and ROOT/test, "
            "each holding one folder of images per synset"
        )
    return folders


class TieredImageNet(Folder):
    """tieredImageNet read from ``ROOT/{train,val,test}/<synset>/`` folders of images.

    Class names are the synset folder names. Items are ``[3, image_size, image_size]`` float32
    in [0, 1].

    Args:
        root: the folder holding ``train/``, ``val/`` and ``test/`` (a relative path is looked
            up as :func:`fewcore.paths.resolve_data_path` says).
        image_size: H = W of the items (84 in the literature).
        cache_dir: where decoded images are cached (default ``$FEWCORE_CACHE`` or ``~/.cache/fewcore``).
        disk_cache: cache decoded images on disk; they are kept in memory for the process either way.

    Raises:
        FileNotFoundError: a split folder is missing.
        ValueError: a split folder holds no class folders of images, or a synset is in two splits.
    """

    #: Ren et al. 2018: classes and images per split (779,165 images in all)
    expected_counts: ClassVar[dict[str, Expected]] = {
        "train": Expected(351, 448_695),
        "val": Expected(97, 124_261),
        "test": Expected(160, 206_209),
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 84,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
    ) -> None:
        super().__init__(_split_folders(root), image_size=image_size, channels=3, cache_dir=cache_dir, disk_cache=disk_cache)

    @classmethod
    def survey(cls, root: str | os.PathLike[str]) -> Census:
        """split → synset → number of images in its folder, nothing decoded."""
        return {
            split: {synset: len(files) for synset, files in _folder_files(folder, depth=1).items()}
            for split, folder in _split_folders(root).items()
        }
