"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015): 1,623 handwritten characters from
50 alphabets, 20 drawings each, read from the official layout ``<alphabet>/characterNN/*.png``
in a folder or straight from the original zip.

Images are grayscale, resized (28×28 by default, as in Vinyals et al. 2016 and Snell et al.
2017) and inverted so that strokes are 1 and the background 0. With ``rotations``, every
character also gives the classes of its 90°, 180° and 270° rotations — the augmentation of the
Matching Networks and Prototypical Networks papers, which turns 1,623 characters into 6,492
classes. Splits are chosen by alphabet (each split names a source and its alphabets) and/or by
character (a seeded fraction of the training characters is held out); a character and all its
rotations are always in one split.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from fewcore.plugins.datasets._images import default_cache_dir, load_image_tree
from fewcore.plugins.datasets._store import SPLITS, ClassStore, partition

#: quarter turns of the rotation classes and their name suffixes
_ROTATIONS = ((0, "rot000"), (1, "rot090"), (2, "rot180"), (3, "rot270"))


class Omniglot(ClassStore):
    """Omniglot characters as classes; splits by alphabet or by character.

    Class names are ``"<alphabet>/characterNN"``, or ``"<alphabet>/characterNN/rotDDD"`` in
    rotated splits. Items are ``[1, image_size, image_size]`` float32, ink 1 on background 0.

    A split is given by a spec ``{"root": ..., "alphabets": [...]}``: ``root`` is one folder or
    zip or a list of them (default: the dataset's ``root``), ``alphabets`` the alphabet names to
    take from them (default: all). ``train`` defaults to every alphabet of ``root``; ``val`` and
    ``test`` default to empty, or to a seeded ``val_fraction`` / ``test_fraction`` of the
    training characters (a split by character). The same character in two splits (say Greek
    from two zips) is an error.

    Args:
        root: folder(s) or zip(s) in the official layout, e.g. ``images_background.zip``.
        train: spec of the train split.
        val: spec of the val split.
        test: spec of the test split.
        val_fraction: fraction of the train characters moved to val (when ``val`` is not given).
        test_fraction: fraction of the train characters moved to test (when ``test`` is not given).
        rotations: ``True`` for rotation classes in every split, or the splits that get them
            (e.g. ``["train"]``).
        image_size: H = W of the items.
        seed: seed of the by-character split.
        cache_dir: where decoded images are cached on disk (default ``$FEWCORE_CACHE`` or
            ``~/.cache/fewcore``); see ``disk_cache``.
        disk_cache: keep decoded images on disk, keyed by source, size and a fingerprint of
            the source; decoded images are kept in memory for the process either way.

    Example — the protocol of docs/RESULTS.md: meta-train on ``images_background_small1``, test
    on the alphabets of ``images_background_small2`` that small1 lacks::

        fewcore.create("dataset", "omniglot", rotations=True,
            train={"root": "data/images_background_small1.zip"},
            test={"root": "data/images_background_small2.zip",
                  "alphabets": ["Japanese_(katakana)", "Sanskrit", "Tagalog"]},
            val_fraction=0.1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        train: Mapping[str, Any] | None = None,
        val: Mapping[str, Any] | None = None,
        test: Mapping[str, Any] | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        rotations: bool | Sequence[str] = False,
        image_size: int = 28,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
    ) -> None:
        specs = {"train": train if train is not None else {}, "val": val, "test": test}
        fractions = {"val": val_fraction, "test": test_fraction}
        for split, fraction in fractions.items():
            if fraction and specs[split] is not None:
                raise ValueError(f"omniglot: give either {split}= or {split}_fraction=, not both")
        rotated = set(SPLITS) if rotations is True else set() if rotations is False else set(rotations)
        if not rotated <= set(SPLITS):
            raise ValueError(f"omniglot: rotations names unknown splits {sorted(rotated - set(SPLITS))}")
        cache = (cache_dir if cache_dir is not None else default_cache_dir()) if disk_cache else None

        characters: dict[str, Tensor] = {}
        chosen: dict[str, list[str]] = {}
        for split, spec in specs.items():
            if spec is None:
                chosen[split] = []
                continue
            found = _select(spec, root, split, image_size, cache)
            characters.update(found)
            chosen[split] = sorted(found)
        if val_fraction or test_fraction:
            keep = 1.0 - val_fraction - test_fraction
            kept, held_val, held_test = partition(chosen["train"], (keep, val_fraction, test_fraction), seed)
            chosen["train"] = sorted(kept)
            if val_fraction:
                chosen["val"] = sorted(held_val)
            if test_fraction:
                chosen["test"] = sorted(held_test)
        overlap = {
            name
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
            for name in set(chosen[a]) & set(chosen[b])
        }
        if overlap:
            raise ValueError(
                f"omniglot: {len(overlap)} characters (e.g. {sorted(overlap)[:3]}) are in two splits, for "
                "instance the same alphabet from two sources; pick alphabets so that splits are disjoint"
            )

        items: dict[str, Tensor] = {}
        splits: dict[str, list[str]] = {}
        for split, names in chosen.items():
            splits[split] = []
            for name in names:
                if split in rotated:
                    for quarter, suffix in _ROTATIONS:
                        items[f"{name}/{suffix}"] = torch.rot90(characters[name], quarter, dims=(2, 3)).contiguous()
                        splits[split].append(f"{name}/{suffix}")
                else:
                    items[name] = characters[name]
                    splits[split].append(name)
        super().__init__(items, splits)


def _select(
    spec: Mapping[str, Any],
    default_root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    split: str,
    image_size: int,
    cache_dir: str | os.PathLike[str] | None,
) -> dict[str, Tensor]:
    """The characters a split spec selects: ``"<alphabet>/characterNN"`` → ``[20, 1, S, S]`` uint8."""
    unknown = set(spec) - {"root", "alphabets"}
    if unknown:
        raise ValueError(f"omniglot: the {split!r} spec has unknown keys {sorted(unknown)}; expected root, alphabets")
    roots = spec.get("root", default_root)
    if roots is None:
        raise ValueError(f"omniglot: the {split!r} split has no source; give root= or {split}={{'root': ...}}")
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    found: dict[str, Tensor] = {}
    for source in roots:
        tree = load_image_tree(source, depth=2, image_size=image_size, channels=1, invert=True, cache_dir=cache_dir)
        for name, images in tree.items():
            if name in found:
                raise ValueError(
                    f"omniglot: character {name!r} of the {split!r} split is in more than one source "
                    f"({', '.join(map(str, roots))}); pick alphabets so that each comes from one"
                )
            found[name] = images
    wanted = spec.get("alphabets")
    if wanted is None:
        return found
    if isinstance(wanted, str):
        raise ValueError(f"omniglot: alphabets of the {split!r} split must be a list of names; got the string {wanted!r}")
    available = sorted({name.split("/", 1)[0] for name in found})
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(
            f"omniglot: alphabets {missing} of the {split!r} split are not in {', '.join(map(str, roots))}; "
            f"available: {', '.join(available)}"
        )
    return {name: images for name, images in found.items() if name.split("/", 1)[0] in set(wanted)}
