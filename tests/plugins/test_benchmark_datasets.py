"""The standard benchmark datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB-200-2011),
read from small fixtures written here in each benchmark's official file format."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import fewcore
from fewcore.cli import main
from fewcore.config import load_config
from fewcore.engine import build_dataset
from fewcore.plugins.datasets.cifar100 import _CIFAR_FS_SPLITS, _FC100_SUPERCLASSES
from fewcore.plugins.datasets.cub import chen_split

SPLITS = ("train", "val", "test")


def _colour(index: int) -> tuple[int, int, int]:
    """A colour per class index, far enough apart that JPEG noise cannot confuse two."""
    return (40 * (index % 6) + 20, 40 * (index // 6 % 6) + 20, 200)


def _save_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _mean_colour(items: torch.Tensor) -> list[float]:
    """The mean of each channel over ``[n, 3, H, W]`` items, on the 0..255 scale."""
    return (items.mean(dim=(0, 2, 3)) * 255).tolist()


def _dataset(name: str, root: Path, tmp_path: Path, **options: Any) -> Any:
    if name in ("cifar-fs", "fc100"):
        return fewcore.create("dataset", name, root=root, **options)
    return fewcore.create("dataset", name, root=root, cache_dir=tmp_path / "cache", **options)


# ---------------------------------------------------------------- miniImageNet

MINI_CLASSES = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672"], "test": ["n01930112", "n01981276"]}


def _write_mini(root: Path, per_class: int = 3) -> dict[str, int]:
    """Ravi & Larochelle's layout: {train,val,test}.csv of filename,label beside images/."""
    index = {}
    root.mkdir(parents=True)
    for split, synsets in MINI_CLASSES.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for synset in synsets:
                index[synset] = len(index)
                for number in range(1, per_class + 1):
                    filename = f"{synset}{number:08d}.jpg"
                    writer.writerow([filename, synset])
                    _save_image(root / "images" / filename, _colour(index[synset]), size=(30 + number, 24))
    return index


def test_miniimagenet_reads_the_split_csvs_and_their_images(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    index = _write_mini(root)
    data = _dataset("miniimagenet", root, tmp_path, image_size=16)
    assert data.item_shape == (3, 16, 16)
    for split in SPLITS:
        assert data.classes(split) == sorted(MINI_CLASSES[split])
    for synset, i in index.items():
        items = data.items(synset)
        assert items.shape == (3, 3, 16, 16)
        assert _mean_colour(items) == pytest.approx(_colour(i), abs=3)  # JPEG: a little noise
    survey = type(data).survey(root)
    assert {split: sorted(counts) for split, counts in survey.items()} == {s: sorted(c) for s, c in MINI_CLASSES.items()}
    assert all(n == 3 for counts in survey.values() for n in counts.values())


def test_miniimagenet_errors_name_the_file_and_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    _write_mini(root)
    missing = root / "images" / "n0185567200000002.jpg"
    missing.unlink()
    survey = fewcore.registry().get("dataset", "miniimagenet").factory.survey(root)
    assert survey["val"] == {"n01855672": 2}  # only the images present are counted
    with pytest.raises(FileNotFoundError, match="1 listed images are missing .*n0185567200000002.jpg"):
        _dataset("miniimagenet", root, tmp_path)
    (root / "test.csv").write_text("name,class\nx.jpg,n1\n")
    with pytest.raises(ValueError, match=r"test.csv starts with \['name', 'class'\]; expected the header 'filename,label'"):
        _dataset("miniimagenet", root, tmp_path)
    (root / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.csv does not exist; expected the Ravi & Larochelle layout"):
        _dataset("miniimagenet", root, tmp_path)


def test_miniimagenet_refuses_a_class_in_two_split_files(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    _write_mini(root)
    with (root / "test.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["n0153282900000001.jpg", "n01532829"])  # a training class
    with pytest.raises(ValueError, match="class 'n01532829' is in both the 'train' and the 'test' split"):
        _dataset("miniimagenet", root, tmp_path)


# ---------------------------------------------------------------- tieredImageNet

TIERED_CLASSES = {"train": ["n02085620", "n02085782", "n02086240"], "val": ["n03000134", "n03000247"], "test": ["n04596742"]}


def _write_tiered(root: Path) -> dict[str, int]:
    """The class-folder form: {train,val,test}/<synset>/*.JPEG, a different count per class."""
    index = {}
    for split, synsets in TIERED_CLASSES.items():
        for synset in synsets:
            index[synset] = len(index)
            for number in range(2 + index[synset] % 3):
                _save_image(root / split / synset / f"{synset}_{number}.JPEG", _colour(index[synset]))
    return index


def test_tieredimagenet_reads_one_folder_of_synsets_per_split(tmp_path: Path) -> None:
    root = tmp_path / "tiered"
    index = _write_tiered(root)
    data = _dataset("tieredimagenet", root, tmp_path, image_size=12)
    for split in SPLITS:
        assert data.classes(split) == TIERED_CLASSES[split]
    for synset, i in index.items():
        assert data.items(synset).shape == (2 + i % 3, 3, 12, 12)
        assert _mean_colour(data.items(synset)) == pytest.approx(_colour(i), abs=3)
    survey = type(data).survey(root)
    assert survey == {split: {s: 2 + index[s] % 3 for s in synsets} for split, synsets in TIERED_CLASSES.items()}


def test_tieredimagenet_names_a_missing_split_folder(tmp_path: Path) -> None:
    root = tmp_path / "tiered"
    _write_tiered(root)
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=r"tiered/val not found; expected ROOT/train, ROOT/val and ROOT/test"):
        _dataset("tieredimagenet", root, tmp_path)


# ---------------------------------------------------------------- CIFAR-100: CIFAR-FS and FC100

#: CIFAR-100's taxonomy: superclass → its five fine classes (both name lists of the official
#: meta file are in alphabetical order, which gives the label indices)
CIFAR100_TAXONOMY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(f for fines in CIFAR100_TAXONOMY.values() for f in fines)
COARSE = sorted(CIFAR100_TAXONOMY)
COARSE_OF = {f: COARSE.index(c) for c, fines in CIFAR100_TAXONOMY.items() for f in fines}


def _cifar_image(fine: int, number: int) -> np.ndarray:
    """One 32x32 image as CIFAR stores it: 3072 values, the R, G and B planes one after another."""
    planes = np.stack([np.full((32, 32), fine), np.full((32, 32), 100 + number), np.arange(32 * 32).reshape(32, 32) % 251])
    return planes.astype(np.uint8).reshape(-1)


def _write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> None:
    """The unpacked cifar-100-python.tar.gz: meta, train, test pickles of the official keys."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    number = 0
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = [f for f in range(len(FINE)) for _ in range(per_class)]
        images = []
        for f in fine:
            images.append(_cifar_image(f, number))
            number += 1
        batch = {
            "filenames": [f"image_{i}.png" for i in range(len(fine))],
            "batch_label": f"{part}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [COARSE_OF[FINE[f]] for f in fine],
            "data": np.stack(images),
        }
        (folder / part).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_fs_is_the_published_64_16_20_class_split(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    data = _dataset("cifar-fs", tmp_path, tmp_path)
    assert [len(data.classes(s)) for s in SPLITS] == [64, 16, 20]
    assert sorted(c for s in SPLITS for c in data.classes(s)) == FINE
    assert "whale" in data.classes("test") and "otter" in data.classes("val") and "dolphin" in data.classes("train")
    assert data.item_shape == (3, 32, 32)
    # both pickles feed every class, in file order; channels come from CIFAR's planes
    apple = data.items("apple")
    assert apple.shape == (3, 3, 32, 32)
    expected = np.stack([_cifar_image(FINE.index("apple"), n) for n in (0, 1, 200)]).reshape(3, 3, 32, 32)
    torch.testing.assert_close(apple, torch.from_numpy(expected).float() / 255)
    survey = type(data).survey(tmp_path)
    assert {s: len(c) for s, c in survey.items()} == {"train": 64, "val": 16, "test": 20}
    assert set(survey["test"].values()) == {3}


def test_fc100_splits_by_superclass(tmp_path: Path) -> None:
    _write_cifar100(tmp_path / "cifar")
    data = _dataset("fc100", tmp_path / "cifar" / "cifar-100-python", tmp_path)  # the inner folder works too
    assert [len(data.classes(s)) for s in SPLITS] == [60, 20, 20]
    for split in SPLITS:
        superclasses = {COARSE[COARSE_OF[f]] for f in data.classes(split)}
        assert superclasses == set(_FC100_SUPERCLASSES[split])
    test_superclasses = ("aquatic_mammals", "insects", "medium_mammals", "people")
    assert data.classes("test") == sorted(f for c in test_superclasses for f in CIFAR100_TAXONOMY[c])


def test_cifar_images_can_be_resized(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    data = _dataset("cifar-fs", tmp_path, tmp_path, image_size=16)
    items = data.items("rocket")
    assert items.shape == (3, 3, 16, 16)
    # the R and G planes are constant, so resizing keeps them exactly
    assert torch.all(items[:, 0] == FINE.index("rocket") / 255)


def test_cifar_splits_use_real_cifar100_names() -> None:
    assert sorted(f for names in _CIFAR_FS_SPLITS.values() for f in names) == FINE
    assert sorted(c for names in _FC100_SUPERCLASSES.values() for c in names) == COARSE


def test_cifar_pickles_that_ask_for_code_are_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("this must not run",))

    _write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": Payload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"asks for (__builtin__|builtins)\.print"):
        _dataset("cifar-fs", tmp_path, tmp_path)


def test_cifar_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="meta does not exist; expected the unpacked cifar-100-python.tar.gz"):
        _dataset("fc100", tmp_path, tmp_path)
    _write_cifar100(tmp_path)
    meta = {"fine_label_names": [n.replace("whale", "orca") for n in FINE], "coarse_label_names": COARSE}
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(ValueError, match=r"cifar-fs: the classes \['whale'\] of its split are not in this CIFAR-100 meta"):
        _dataset("cifar-fs", tmp_path, tmp_path)


# ---------------------------------------------------------------- CUB-200-2011

CUB_NAMES = [
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
    "005.Crested_Auklet",
    "006.Least_Auklet",
    "007.Parakeet_Auklet",
    "008.Rhinoceros_Auklet",
]


def _write_cub(root: Path) -> dict[str, list[int]]:
    """The unpacked CUB_200_2011.tgz (a few classes): the three index files and images/.
    Image ids interleave the classes, so reading by id (not by position) is tested."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True)
    (folder / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(CUB_NAMES, start=1)))
    images, labels = [], []
    ids: dict[str, list[int]] = {name: [] for name in CUB_NAMES}
    for image_id in range(1, 3 * len(CUB_NAMES) + 1):
        class_id = (image_id * 3) % len(CUB_NAMES) + 1
        name = CUB_NAMES[class_id - 1]
        path = f"{name}/{name.split('.', 1)[1]}_{image_id:04d}_{image_id * 7}.jpg"
        _save_image(folder / "images" / path, _colour(class_id), size=(25 + image_id, 20))
        images.append(f"{image_id} {path}\n")
        labels.append(f"{image_id} {class_id}\n")
        ids[name].append(image_id)
    (folder / "images.txt").write_text("".join(images))
    (folder / "image_class_labels.txt").write_text("".join(labels))
    return ids


def test_cub_reads_the_index_files_with_the_split_of_chen_et_al(tmp_path: Path) -> None:
    ids = _write_cub(tmp_path)
    data = _dataset("cub", tmp_path, tmp_path, image_size=8)  # the folder above CUB_200_2011 works
    assert data.classes("train") == [CUB_NAMES[i] for i in (0, 2, 4, 6)]
    assert data.classes("val") == [CUB_NAMES[1], CUB_NAMES[5]]
    assert data.classes("test") == [CUB_NAMES[3], CUB_NAMES[7]]
    for class_id, name in enumerate(CUB_NAMES, start=1):
        items = data.items(name)
        assert items.shape == (len(ids[name]), 3, 8, 8)
        assert _mean_colour(items) == pytest.approx(_colour(class_id), abs=3)
    survey = type(data).survey(tmp_path / "CUB_200_2011")
    assert survey["test"] == {CUB_NAMES[3]: 3, CUB_NAMES[7]: 3}


def test_chen_split_of_the_200_cub_classes_is_100_50_50() -> None:
    names = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    split = chen_split(list(reversed(names)))  # the listing order does not matter
    assert [len(split[s]) for s in SPLITS] == [100, 50, 50]
    assert split["train"][:3] == ["001.Bird_1", "003.Bird_3", "005.Bird_5"]
    assert split["val"][:2] == ["002.Bird_2", "006.Bird_6"]
    assert split["test"][:2] == ["004.Bird_4", "008.Bird_8"]


def test_cub_errors_name_the_file_and_line(tmp_path: Path) -> None:
    _write_cub(tmp_path)
    folder = tmp_path / "CUB_200_2011"
    with (folder / "image_class_labels.txt").open("a") as handle:
        handle.write("25 9\n")
    with (folder / "images.txt").open("a") as handle:
        handle.write("25 009.Brewer_Blackbird/x.jpg\n")
    with pytest.raises(ValueError, match=r"image 25 has class '9' in image_class_labels.txt, which classes.txt does not list"):
        _dataset("cub", tmp_path, tmp_path)
    (folder / "classes.txt").write_text("1 001.Black_footed_Albatross\nbroken line\n")
    with pytest.raises(ValueError, match=r"line 2 of .*classes.txt is 'broken line'; expected '<integer id> <value>'"):
        _dataset("cub", tmp_path, tmp_path)


# ---------------------------------------------------------------- fewcore data check


def test_data_check_passes_a_complete_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "CUB_200_2011"
    names = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    (folder / "images").mkdir(parents=True)
    (folder / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(names, start=1)))
    (folder / "images.txt").write_text("".join(f"{i} {name}/{i}.jpg\n" for i, name in enumerate(names, start=1)))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {i}\n" for i in range(1, 201)))
    for name in names:
        (folder / "images" / name).mkdir()
        (folder / "images" / name / f"{int(name[:3])}.jpg").write_bytes(b"")  # counted, never decoded
    assert main(["data", "check", "cub", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "train       100       100" in out and "matches the published counts" in out


def test_data_check_reports_what_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_mini(tmp_path / "mini")
    assert main(["data", "check", "miniimagenet", str(tmp_path / "mini"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert report["splits"][0] == {
        "split": "train", "classes": 3, "expected_classes": 64, "images": 9, "expected_images": 38400, "empty_classes": []
    }
    assert main(["data", "check", "folder", str(tmp_path)]) == 2
    assert "dataset 'folder' has no published counts" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped configs

CONFIG_DATA = {
    "miniimagenet": lambda data: _write_mini(data / "miniimagenet"),
    "tieredimagenet": lambda data: _write_tiered(data / "tieredimagenet"),
    "cifar-fs": lambda data: _write_cifar100(data / "cifar100"),
    "fc100": lambda data: _write_cifar100(data / "cifar100"),
    "cub": lambda data: _write_cub(data),
}


@pytest.mark.parametrize("name", sorted(CONFIG_DATA))
def test_shipped_config_builds_its_dataset_from_the_data_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    CONFIG_DATA[name](data)
    monkeypatch.setenv("FEWCORE_DATA", str(data))  # the config's root is relative to the data folder
    monkeypatch.setenv("FEWCORE_CACHE", str(tmp_path / "cache"))
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / f"protonet_{name}.toml")
    assert (config.dataset.name, config.backbone.name, config.learner.name) == (name, "resnet12", "protonet")
    dataset = build_dataset(config)
    side = 32 if name in ("cifar-fs", "fc100") else 84
    assert dataset.item_shape == (3, side, side)
    assert all(dataset.classes(split) for split in SPLITS)
