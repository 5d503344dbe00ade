"""The built-in datasets: glyphs, omniglot, folder, tensors, and the class store under them."""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import fewcore
from fewcore.plugins.datasets import _images
from fewcore.plugins.datasets._store import ClassStore, partition
from fewcore.plugins.datasets.glyphs import _generate

SMALL2_ONLY = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]


def all_classes(dataset: Any) -> list[str]:
    return [c for split in ("train", "val", "test") for c in dataset.classes(split)]


# ---------------------------------------------------------------- class store and splits


def test_partition_is_seeded_order_free_and_complete() -> None:
    names = [f"c{i}" for i in range(10)]
    parts = partition(names, (0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(sum(parts, [])) == sorted(names)
    assert partition(list(reversed(names)), (0.6, 0.2, 0.2), seed=3) == parts
    assert partition(names, (0.6, 0.2, 0.2), seed=4) != parts
    with pytest.raises(ValueError, match="sum to at most 1"):
        partition(names, (0.8, 0.3), seed=0)


def test_store_refuses_a_class_in_two_splits() -> None:
    items = {"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match="class 'a' is in both the 'train' and the 'test' split"):
        ClassStore(items, {"train": ["a", "b"], "test": ["a"]})


def test_store_errors_name_what_is_wrong() -> None:
    items = {"alpha": torch.zeros(3, 2), "beta": torch.zeros(3, 2)}
    store = ClassStore(items, {"train": ["alpha"], "val": ["beta"]})
    assert store.classes("test") == []
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        store.items("alpah")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        store.classes("dev")
    with pytest.raises(ValueError, match="lists class 'gamma', which has no items"):
        ClassStore(items, {"train": ["gamma"]})
    with pytest.raises(ValueError, match=r"class 'alpha' has \(2,\) but class 'gamma' has \(3,\)"):
        ClassStore({"alpha": torch.zeros(3, 2), "gamma": torch.zeros(3, 3)}, {})


# ---------------------------------------------------------------- glyphs


def test_glyphs_items_splits_and_names() -> None:
    glyphs = fewcore.create("dataset", "glyphs", alphabets=10, characters=6, drawings=5, seed=1)
    assert glyphs.item_shape == (1, 28, 28)
    assert [len(glyphs.classes(s)) for s in ("train", "val", "test")] == [36, 12, 12]
    items = glyphs.items(glyphs.classes("test")[0])
    assert items.shape == (5, 1, 28, 28) and items.dtype == torch.float32
    assert items.min() == 0 and items.max() == 1
    # ink on a zero background: strokes cover a small part of each image
    assert 0.02 < items.mean() < 0.4
    # splits are by alphabet: no alphabet gives characters to two splits
    alphabets = [{c.split("/")[0] for c in glyphs.classes(s)} for s in ("train", "val", "test")]
    assert not (alphabets[0] & alphabets[1] or alphabets[0] & alphabets[2] or alphabets[1] & alphabets[2])


def test_glyphs_are_deterministic() -> None:
    a = _generate.__wrapped__(7, 3, 4, 5, 28, 1.0)
    b = _generate.__wrapped__(7, 3, 4, 5, 28, 1.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, _generate.__wrapped__(8, 3, 4, 5, 28, 1.0))
    # alphabet a depends on (seed, a) only: asking for more alphabets keeps the first ones
    assert torch.equal(a, _generate.__wrapped__(7, 5, 4, 5, 28, 1.0)[:3])


def test_glyph_drawings_vary_and_characters_differ() -> None:
    images = _generate.__wrapped__(0, 2, 5, 4, 28, 1.0).float()
    drawings_differ = (images[:, :, 0] != images[:, :, 1]).flatten(2).any(-1)
    assert drawings_differ.all()
    assert torch.equal(_generate.__wrapped__(0, 1, 5, 2, 28, 0.0)[0, :, 0], _generate.__wrapped__(0, 1, 5, 2, 28, 0.0)[0, :, 1])


def test_glyphs_are_neither_trivial_nor_hopeless() -> None:
    """Nearest prototype in pixel space: well above chance (20%), far from solved (about 50%),
    so that a learner has something to learn."""
    glyphs = fewcore.create("dataset", "glyphs", alphabets=20, characters=10)
    sampler = fewcore.create(
        "sampler", "episodic", dataset=glyphs, split="test", n_way=5, k_shot=1, q_query=5, batch_size=50, seed=0
    )
    episode = next(iter(sampler))
    distance = torch.cdist(episode.query_x.flatten(2), episode.support_x.flatten(2))  # 1-shot: support = prototypes
    predicted = episode.support_y.gather(1, distance.argmin(-1))
    accuracy = (predicted == episode.query_y).float().mean().item()
    assert 0.3 < accuracy < 0.75


def test_glyph_generation_is_fast() -> None:
    """1,000 classes × 20 drawings at 28×28 (about 2 s on one idle core; bound loose for shared CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        images = _generate.__wrapped__(123, 50, 20, 20, 28, 1.0)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert images.shape == (50, 20, 20, 1, 28, 28)
    assert elapsed < 30.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"alphabets": 0}, "alphabets must be at least 1"),
        ({"image_size": 4}, "image_size must be at least 8"),
        ({"fractions": (0.5, 0.5)}, r"fractions must be \(train, val, test\)"),
    ],
)
def test_glyph_configuration_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fewcore.create("dataset", "glyphs", **config)


# ---------------------------------------------------------------- omniglot


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.mark.omniglot
def test_omniglot_evaluation_protocol(omniglot_dir: Path, omniglot_cache: Path) -> None:
    """Train on all of small1 with rotations, test on the alphabets small1 lacks."""
    dataset = fewcore.create(
        "dataset",
        "omniglot",
        rotations=["train"],
        train={"root": str(omniglot_dir / "images_background_small1.zip")},
        test={"root": str(omniglot_dir / "images_background_small2.zip"), "alphabets": SMALL2_ONLY},
        cache_dir=str(omniglot_cache),
    )
    train, test = dataset.classes("train"), dataset.classes("test")
    assert len(train) == 136 * 4  # README: 136 characters in small1
    assert {c.split("/")[0] for c in train} == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert {c.split("/")[0] for c in test} == set(SMALL2_ONLY)
    assert dataset.classes("val") == []
    items = dataset.items(test[0])
    assert items.shape == (20, 1, 28, 28) and dataset.item_shape == (1, 28, 28)
    # strokes are the foreground: ink 1 on a mostly zero background
    assert items.max() == 1 and 0.02 < items.mean() < 0.3
    assert items[..., 0, :].mean() < 0.05  # the top row is background
    base = train[0].rsplit("/", 1)[0]
    upright = dataset.items(f"{base}/rot000")
    assert torch.equal(dataset.items(f"{base}/rot090"), torch.rot90(upright, 1, dims=(2, 3)))
    assert torch.equal(dataset.items(f"{base}/rot180"), torch.rot90(upright, 2, dims=(2, 3)))


@pytest.mark.omniglot
def test_omniglot_refuses_an_alphabet_in_two_splits(omniglot_dir: Path, omniglot_cache: Path) -> None:
    with pytest.raises(ValueError, match=r"50 characters \(e.g. \['Greek/character01'"):
        fewcore.create(
            "dataset",
            "omniglot",
            train={"root": str(omniglot_dir / "images_background_small1.zip")},
            test={"root": str(omniglot_dir / "images_background_small2.zip")},
            cache_dir=str(omniglot_cache),
        )


@pytest.mark.omniglot
def test_omniglot_split_by_character_keeps_rotations_together(omniglot_dir: Path, omniglot_cache: Path) -> None:
    dataset = fewcore.create(
        "dataset",
        "omniglot",
        root=str(omniglot_dir / "images_background_small1.zip"),
        val_fraction=0.1,
        test_fraction=0.2,
        rotations=True,
        seed=5,
        cache_dir=str(omniglot_cache),
    )
    characters = [{c.rsplit("/", 1)[0] for c in dataset.classes(s)} for s in ("train", "val", "test")]
    assert [len(c) for c in characters] == [95, 14, 27]  # 136 characters, cut 70/10/20
    assert not (characters[0] & characters[1] or characters[0] & characters[2] or characters[1] & characters[2])
    assert all(len(dataset.classes(s)) == 4 * len(c) for s, c in zip(("train", "val", "test"), characters))


@pytest.mark.omniglot
def test_omniglot_split_by_alphabet_from_one_root(omniglot_dir: Path, omniglot_cache: Path) -> None:
    dataset = fewcore.create(
        "dataset",
        "omniglot",
        root=str(omniglot_dir / "images_background_small1.zip"),
        train={"alphabets": ["Balinese", "Greek", "Latin"]},
        val={"alphabets": ["Korean"]},
        test={"alphabets": ["Early_Aramaic"]},
        image_size=20,
        cache_dir=str(omniglot_cache),
    )
    assert dataset.item_shape == (1, 20, 20)
    assert {c.split("/")[0] for c in dataset.classes("val")} == {"Korean"}
    assert {c.split("/")[0] for c in dataset.classes("test")} == {"Early_Aramaic"}


@pytest.mark.omniglot
def test_omniglot_errors(omniglot_dir: Path, omniglot_cache: Path) -> None:
    small1 = str(omniglot_dir / "images_background_small1.zip")
    with pytest.raises(ValueError, match=r"alphabets \['Klingon'\] of the 'test' split are not in .*available: Balinese"):
        fewcore.create("dataset", "omniglot", root=small1, test={"alphabets": ["Klingon"]}, cache_dir=str(omniglot_cache))
    with pytest.raises(ValueError, match="give either val= or val_fraction="):
        fewcore.create("dataset", "omniglot", root=small1, val={}, val_fraction=0.1)
    with pytest.raises(ValueError, match="the 'train' split has no source"):
        fewcore.create("dataset", "omniglot")
    with pytest.raises(FileNotFoundError, match=r"data path .*nope\.zip not found: tried .*nope\.zip \(an absolute path\)"):
        fewcore.create("dataset", "omniglot", root=str(omniglot_dir / "nope.zip"))


@pytest.mark.omniglot
def test_omniglot_disk_cache_matches_fresh_decoding(omniglot_dir: Path, tmp_path: Path) -> None:
    small1 = str(omniglot_dir / "images_background_small1.zip")
    fresh = fewcore.create("dataset", "omniglot", root=small1, image_size=14, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("images-*.pt"))) == 1
    _images._memory.clear()  # as in a new process
    cached = fewcore.create("dataset", "omniglot", root=small1, image_size=14, cache_dir=str(tmp_path))
    assert fresh.classes("train") == cached.classes("train")
    assert all(torch.equal(fresh.items(c), cached.items(c)) for c in fresh.classes("train"))


# ---------------------------------------------------------------- class folders


def write_class_folders(root: Path, n_classes: int = 3, n_images: int = 4) -> None:
    """Small PNGs whose colour says their class and image: red = class, green = image."""
    for c in range(n_classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n_images):
            colour = (40 * c + 10, 30 * i + 5, 200)
            Image.new("RGB", (12, 9), colour).save(root / f"class{c}" / f"img{i}.png")


def test_folder_decodes_resizes_and_splits(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    dataset = fewcore.create(
        "dataset",
        "folder",
        root=str(tmp_path / "data"),
        image_size=8,
        splits={"train": ["class0", "class2"], "test": ["class1"]},
        cache_dir=str(tmp_path / "cache"),
    )
    assert dataset.item_shape == (3, 8, 8)
    assert dataset.classes("train") == ["class0", "class2"] and dataset.classes("test") == ["class1"]
    items = dataset.items("class2")
    assert items.shape == (4, 3, 8, 8) and items.dtype == torch.float32
    expected = torch.tensor([[90, 30 * i + 5, 200] for i in range(4)], dtype=torch.float32) / 255
    torch.testing.assert_close(items.mean(dim=(2, 3)), expected, atol=1e-6, rtol=0)


def test_folder_cache_is_rebuilt_when_files_change(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_class_folders(root)
    config: dict[str, Any] = dict(root=str(root), image_size=4, channels=1, cache_dir=str(tmp_path / "cache"))
    before = fewcore.create("dataset", "folder", **config)
    assert len(all_classes(before)) == 3
    Image.new("RGB", (12, 9), (255, 255, 255)).save(root / "class0" / "img0.png")
    Image.new("RGB", (12, 9), (0, 0, 0)).save(root / "class0" / "img9.png")
    stamp = time.time_ns() + 10**9  # a new mtime even on coarse file-system clocks
    os.utime(root / "class0" / "img0.png", ns=(stamp, stamp))
    _images._memory.clear()
    after = fewcore.create("dataset", "folder", **config, splits={"train": ["class0"]})
    assert after.items("class0").shape[0] == 5
    assert after.items("class0")[0].min() == 1.0  # the white image now first
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1  # rebuilt in place


def test_folder_with_a_folder_per_split(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "train", n_classes=2)
    write_class_folders(tmp_path / "test", n_classes=3)
    with pytest.raises(ValueError, match=r"classes \['class0', 'class1'\] of the 'test' folder .* are also in another"):
        fewcore.create(
            "dataset", "folder", root={"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}, disk_cache=False
        )
    (tmp_path / "test" / "class0").rename(tmp_path / "test" / "other0")
    (tmp_path / "test" / "class1").rename(tmp_path / "test" / "other1")
    (tmp_path / "test" / "class2").rename(tmp_path / "test" / "other2")
    dataset = fewcore.create(
        "dataset", "folder", root={"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}, disk_cache=False
    )
    assert dataset.classes("train") == ["class0", "class1"]
    assert dataset.classes("test") == ["other0", "other1", "other2"]


def test_folder_from_a_zip(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "data" / "top")
    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as archive:  # top/<class>/*.png
        for png in sorted((tmp_path / "data").rglob("*.png")):
            archive.write(png, png.relative_to(tmp_path / "data").as_posix())
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as archive:  # <class>/*.png, one class only
        for png in sorted((tmp_path / "data" / "top" / "class1").glob("*.png")):
            archive.write(png, png.relative_to(tmp_path / "data" / "top").as_posix())
    nested = fewcore.create("dataset", "folder", root=str(tmp_path / "nested.zip"), image_size=6, disk_cache=False)
    assert sorted(all_classes(nested)) == ["class0", "class1", "class2"]
    flat = fewcore.create(
        "dataset", "folder", root=str(tmp_path / "flat.zip"), image_size=6, splits={"test": ["class1"]}, disk_cache=False
    )
    assert torch.equal(flat.items("class1"), nested.items("class1"))


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found .* expected the layout <folder>/<image>.png"):
        fewcore.create("dataset", "folder", root=str(tmp_path / "empty"), disk_cache=False)
    (tmp_path / "empty" / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        fewcore.create("dataset", "folder", root=str(tmp_path / "empty"), disk_cache=False)
    write_class_folders(tmp_path / "data")
    with pytest.raises(ValueError, match=r"split 'train' names classes that do not exist: \['dog'\]"):
        fewcore.create("dataset", "folder", root=str(tmp_path / "data"), splits={"train": ["dog"]}, disk_cache=False)


# ---------------------------------------------------------------- tensors


def test_tensors_from_features_with_named_splits() -> None:
    x = torch.arange(30, dtype=torch.float64).view(10, 3)
    y = torch.tensor([0, 1, 2, 3, 4] * 2)
    dataset = fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [0, 1, 2], "test": [3, 4]})
    assert dataset.item_shape == (3,)
    assert dataset.classes("train") == ["0", "1", "2"] and dataset.classes("val") == []
    items = dataset.items("1")
    assert items.dtype == torch.float32
    assert torch.equal(items, torch.tensor([[3.0, 4, 5], [18, 19, 20]]))


def test_tensors_from_uint8_images_and_a_fraction_split() -> None:
    x = np.full((40, 1, 5, 5), 255, dtype=np.uint8)
    y = [f"class{i % 10}" for i in range(40)]
    dataset = fewcore.create("dataset", "tensors", x=x, y=y, fractions=(0.5, 0.2, 0.3), seed=2)
    assert [len(dataset.classes(s)) for s in ("train", "val", "test")] == [5, 2, 3]
    assert sorted(all_classes(dataset)) == sorted(set(y))
    assert torch.equal(dataset.items("class3"), torch.ones(4, 1, 5, 5))


def test_tensors_default_split_is_60_20_20_of_the_classes_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    x, y = torch.zeros(20, 3), [i % 10 for i in range(20)]
    with caplog.at_level(logging.WARNING, logger="fewcore.plugins.datasets.tensors"):
        dataset = fewcore.create("dataset", "tensors", x=x, y=y)
    assert [len(dataset.classes(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert "split the 10 classes by fractions 0.6/0.2/0.2 (seed 0) into train 6, val 2, test 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fewcore.plugins.datasets.tensors"):
        fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": range(5), "test": range(5, 10)})
    assert caplog.text == ""


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensors_from_a_file(tmp_path: Path, suffix: str) -> None:
    x, y = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32), np.repeat(np.arange(3), 4)
    path = tmp_path / f"features{suffix}"
    if suffix == ".pt":
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)
    else:
        np.savez(path, x=x, y=y)
    dataset = fewcore.create("dataset", "tensors", path=str(path), splits={"train": [0, 1], "test": [2]})
    assert torch.equal(dataset.items("2"), torch.from_numpy(x[8:]))


def test_tensors_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x has 4 items but y has 3 labels"):
        fewcore.create("dataset", "tensors", x=torch.zeros(4, 2), y=[0, 1, 2])
    with pytest.raises(ValueError, match=r"must be \[n, \*item_shape\]"):
        fewcore.create("dataset", "tensors", x=torch.zeros(4), y=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="give the items x and their labels y"):
        fewcore.create("dataset", "tensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r'must hold a dict \{"x": ..., "y": ...\}'):
        fewcore.create("dataset", "tensors", path=str(tmp_path / "list.pt"))


def test_every_dataset_is_registered() -> None:
    assert {"glyphs", "omniglot", "folder", "tensors"} <= set(fewcore.list_components("dataset"))
