"""Few-shot benchmarks over CIFAR-100 (Krizhevsky 2009), read from its Python pickles.

Both benchmarks use all 600 images of each of the 100 fine classes (the 500 of CIFAR-100's
``train`` file and the 100 of its ``test`` file), 32×32 RGB, and differ in the class split:

- **CIFAR-FS** (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019, "Meta-learning with
  differentiable closed-form solvers"): 64 / 16 / 20 fine classes drawn at random by the authors,
  taken here by name from their published split lists.
- **FC100** (Oreshkin, Rodríguez & Lacoste, NeurIPS 2018, "TADAM"): the split is by CIFAR-100's
  20 superclasses, 12 / 4 / 4, so that test classes share no superclass with training classes:
  60 / 20 / 20 fine classes.

The layout read is the official archive ``cifar-100-python.tar.gz`` unpacked::

    ROOT/cifar-100-python/{meta,train,test}     (or ROOT/{meta,train,test})

The CIFAR-FS class lists and the FC100 superclasses are facts of those papers' split files, read
from the public copies distributed with torchmeta (its ``cifar100/cifar-fs`` and
``cifar100/fc100`` assets); their sizes are the papers'. The pickles are read with an unpickler
that accepts nothing but numpy arrays and plain Python values, so a tampered file cannot run code.
"""

from __future__ import annotations

import abc
import os
import pickle
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fewcore.paths import resolve_data_path
from fewcore.plugins.datasets._benchmark import Census, Expected, require_file
from fewcore.plugins.datasets._store import SPLITS, ClassStore

#: side of a CIFAR image
_CIFAR_SIZE = 32
_LAYOUT = "the unpacked cifar-100-python.tar.gz: ROOT/cifar-100-python/{meta,train,test} or ROOT/{meta,train,test}"

#: CIFAR-FS (Bertinetto et al. 2019) fine classes per split, grouped by superclass for reading
_CIFAR_FS_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "dolphin", "seal",                                        # aquatic mammals
        "aquarium_fish", "ray", "trout",                          # fish
        "orchid", "sunflower", "tulip",                           # flowers
        "bottle", "bowl", "can", "cup", "plate",                  # food containers
        "apple", "mushroom", "orange", "pear",                    # fruit and vegetables
        "clock", "keyboard",                                      # household electrical devices
        "chair", "couch",                                         # household furniture
        "bee", "caterpillar", "cockroach",                        # insects
        "bear", "lion", "tiger", "wolf",                          # large carnivores
        "bridge", "castle", "house", "road", "skyscraper",        # large man-made outdoor things
        "cloud", "forest", "mountain",                            # large natural outdoor scenes
        "elephant", "kangaroo",                                   # large omnivores and herbivores
        "porcupine", "possum", "raccoon", "skunk",                # medium mammals
        "lobster", "spider",                                      # non-insect invertebrates
        "boy", "girl",                                            # people
        "dinosaur", "lizard", "snake", "turtle",                  # reptiles
        "hamster", "mouse", "rabbit", "shrew", "squirrel",        # small mammals
        "oak_tree", "palm_tree", "pine_tree", "willow_tree",      # trees
        "bus", "train",                                           # vehicles 1
        "lawn_mower", "streetcar", "tank",                        # vehicles 2
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
        "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
        "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
        "bicycle", "pickup_truck", "rocket",
    ),
}  # fmt: skip

#: FC100 (Oreshkin et al. 2018) superclasses per split: CIFAR-100 coarse labels
#: 1-6, 9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14
_FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
        "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain Python values and numpy arrays, and refuses every other global."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),  # files written with numpy < 2
            ("numpy._core.multiarray", "_reconstruct"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"a CIFAR-100 pickle holds only arrays, lists and strings; this one asks for {module}.{name}"
            )
        return super().find_class(module, name)


def _folder(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``meta``, ``train`` and ``test``: ``root`` or ``root/cifar-100-python``."""
    root = resolve_data_path(root)
    nested = root / "cifar-100-python"
    return nested if (nested / "meta").is_file() else root


def _unpickle(path: Path) -> dict[str, Any]:
    # latin1 reads the str of the official (Python 2) pickles as str, and numpy's raw bytes intact
    with require_file(path, "cifar-100", _LAYOUT).open("rb") as handle:
        loaded = _ArrayUnpickler(handle, encoding="latin1").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"cifar-100: {path} holds a {type(loaded).__name__}; expected the dict of a CIFAR-100 pickle")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise ValueError(f"cifar-100: {path} has no {key!r} entry (it has {sorted(batch)}); is it a CIFAR-100 pickle?")
    return batch[key]


class _Cifar100(NamedTuple):
    """CIFAR-100's ``train`` and ``test`` files, concatenated in that order."""

    fine_names: list[str]
    coarse_names: list[str]
    fine: np.ndarray  # [n] fine label of each image
    coarse: np.ndarray  # [n] coarse label (superclass) of each image
    data: np.ndarray  # [n, 3072] uint8: the R, G and B planes of each 32x32 image

    def superclasses(self) -> dict[str, str]:
        """fine class → its superclass, from the labels every image carries."""
        pairs = np.unique(np.stack([self.fine, self.coarse], axis=1), axis=0)
        return {self.fine_names[fine]: self.coarse_names[coarse] for fine, coarse in pairs.tolist()}


def _read(root: str | os.PathLike[str]) -> _Cifar100:
    """The meta, train and test pickles under ``root``, checked for the official keys and shapes."""
    folder = _folder(root)
    meta = _unpickle(folder / "meta")
    parts = [_unpickle(folder / part) for part in ("train", "test")]

    def column(key: str, dtype: type | None = None) -> np.ndarray:
        """One entry of both files, concatenated."""
        return np.concatenate(
            [np.asarray(_field(part, key, folder / name), dtype=dtype) for part, name in zip(parts, ("train", "test"))]
        )

    data = column("data")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _CIFAR_SIZE**2:
        raise ValueError(
            f"cifar-100: the 'data' of {folder}/train and /test is {data.dtype} of shape {data.shape}; "
            f"expected uint8 rows of {3 * _CIFAR_SIZE**2} values (32x32 RGB, channel-major)"
        )
    return _Cifar100(
        fine_names=[str(n) for n in _field(meta, "fine_label_names", folder / "meta")],
        coarse_names=[str(n) for n in _field(meta, "coarse_label_names", folder / "meta")],
        fine=column("fine_labels", np.int64),
        coarse=column("coarse_labels", np.int64),
        data=data,
    )


class _Cifar100Benchmark(ClassStore):
    """A class split of CIFAR-100's 100 fine classes, 600 images each.

    Subclasses say which fine classes form each split (:meth:`_split`).
    """

    expected_counts: ClassVar[dict[str, Expected]]

    def __init__(self, root: str | os.PathLike[str], image_size: int = _CIFAR_SIZE) -> None:
        cifar = _read(root)
        splits = self._split(cifar.superclasses())
        images = cifar.data.reshape(-1, 3, _CIFAR_SIZE, _CIFAR_SIZE)
        items = {
            name: torch.from_numpy(images[cifar.fine == cifar.fine_names.index(name)])
            for names in splits.values()
            for name in names
        }
        if image_size != _CIFAR_SIZE:
            items = {name: _resize(pixels, image_size) for name, pixels in items.items()}
        super().__init__(items, splits)

    @classmethod
    @abc.abstractmethod
    def _split(cls, superclass: dict[str, str]) -> dict[str, list[str]]:
        """split → fine class names, given every fine class's superclass."""

    @classmethod
    def survey(cls, root: str | os.PathLike[str]) -> Census:
        """split → fine class → number of its images in the ``train`` and ``test`` pickles."""
        cifar = _read(root)
        counts = np.bincount(cifar.fine, minlength=len(cifar.fine_names))
        return {
            split: {name: int(counts[cifar.fine_names.index(name)]) for name in names}
            for split, names in cls._split(cifar.superclasses()).items()
        }


def _resize(pixels: Tensor, size: int) -> Tensor:
    """``[n, 3, 32, 32]`` uint8 → ``[n, 3, size, size]`` uint8, bilinear with antialiasing."""
    resized = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _check_known(dataset: str, listed: set[str], known: set[str], what: str) -> None:
    unknown = sorted(listed - known)
    if unknown:
        raise ValueError(
            f"{dataset}: the {what} {unknown[:5]} of its split are not in this CIFAR-100 meta file "
            f"(it names {len(known)}, e.g. {sorted(known)[:3]}); is ROOT the CIFAR-100 python version?"
        )


class CifarFS(_Cifar100Benchmark):
    """CIFAR-FS: 64 / 16 / 20 CIFAR-100 fine classes (Bertinetto et al. 2019).

    Class names are CIFAR-100's fine label names (``"apple"``, ``"aquarium_fish"``, ...). Items
    are ``[3, image_size, image_size]`` float32 in [0, 1].

    Args:
        root: the folder holding ``cifar-100-python/`` (or its ``meta``, ``train``, ``test`` files);
            a relative path is looked up as :func:`fewcore.paths.resolve_data_path` says.
        image_size: H = W of the items; 32, CIFAR's own size, keeps the images as they are.
    """

    expected_counts: ClassVar[dict[str, Expected]] = {
        "train": Expected(64, 64 * 600),
        "val": Expected(16, 16 * 600),
        "test": Expected(20, 20 * 600),
    }

    @classmethod
    def _split(cls, superclass: dict[str, str]) -> dict[str, list[str]]:
        _check_known("cifar-fs", {n for names in _CIFAR_FS_SPLITS.values() for n in names}, set(superclass), "classes")
        return {split: sorted(_CIFAR_FS_SPLITS[split]) for split in SPLITS}


class FC100(_Cifar100Benchmark):
    """FC100: CIFAR-100 split by superclass, 12 / 4 / 4 superclasses of 5 classes (Oreshkin et al. 2018).

    Class names are CIFAR-100's fine label names. Items are ``[3, image_size, image_size]``
    float32 in [0, 1].

    Args:
        root: the folder holding ``cifar-100-python/`` (or its ``meta``, ``train``, ``test`` files);
            a relative path is looked up as :func:`fewcore.paths.resolve_data_path` says.
        image_size: H = W of the items; 32, CIFAR's own size, keeps the images as they are.
    """

    expected_counts: ClassVar[dict[str, Expected]] = {
        "train": Expected(60, 60 * 600),
        "val": Expected(20, 20 * 600),
        "test": Expected(20, 20 * 600),
    }

    @classmethod
    def _split(cls, superclass: dict[str, str]) -> dict[str, list[str]]:
        listed = {s for names in _FC100_SUPERCLASSES.values() for s in names}
        _check_known("fc100", listed, set(superclass.values()), "superclasses")
        return {
            split: sorted(fine for fine, coarse in superclass.items() if coarse in _FC100_SUPERCLASSES[split])
            for split in SPLITS
        }
