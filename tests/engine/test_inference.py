"""Using a trained model: fewcore.load, image reading, folder prediction; and plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import fewcore
from fewcore.config import Config
from fewcore.engine import load_checkpoint, load_model, plot_run, read_image, train
from fewcore.engine._inference import read_support
from tests.engine._fakes import Clusters, fake_config_dict


@pytest.fixture
def trained_run(fakes, tmp_path: Path) -> Path:
    train(Config.from_dict(fake_config_dict(str(tmp_path / "run"))), progress=False)
    return tmp_path / "run"


def test_load_returns_the_trained_learner_ready_for_inference(trained_run: Path) -> None:
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    learner = fewcore.load(trained_run)  # a run directory means its best.pt
    assert torch.equal(torch.get_rng_state(), rng_before), "loading must not move the global RNG"
    assert not learner.training
    best = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    for name, tensor in learner.state_dict().items():
        assert torch.equal(tensor, best["model"][name])

    dataset = Clusters()
    names = dataset.classes("test")[:3]
    support_x = torch.stack([dataset.items(n)[0] for n in names])[None]  # [1, 3, 8]
    query_x = torch.stack([dataset.items(n)[5] for n in names])[None]
    scores = learner.predict(support_x, torch.tensor([[0, 1, 2]]), query_x)
    assert scores.shape == (1, 3, 3)
    embeddings = learner.backbone(dataset.items(names[0]))  # the backbone, for a whole batch
    assert embeddings.shape == (12, 16)


def test_load_model_keeps_shape_and_config(trained_run: Path) -> None:
    model = load_model(trained_run / "checkpoints" / "last.pt")
    assert model.item_shape == (8,) and model.config.learner.name == "nearest"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="without checkpoints"):
        fewcore.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        fewcore.load(tmp_path / "nothing.pt")


def test_load_of_run_slash_best_names_the_right_paths(trained_run: Path) -> None:
    # `RUN/best.pt` is what a user types for `RUN/checkpoints/best.pt`; the error shows both right forms.
    with pytest.raises(FileNotFoundError) as error:
        fewcore.load(trained_run / "best.pt")
    message = str(error.value)
    assert f"pass the run directory {trained_run} " in message
    assert str(trained_run / "checkpoints" / "best.pt") in message


def _png(path: Path, ink_on_white: bool, size: int = 40, color: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    background, ink = (255, 0) if ink_on_white else (0, 255)
    image = Image.new("RGB" if color else "L", (size, size), (background,) * 3 if color else background)
    for x in range(5, 30):
        image.putpixel((x, 20), (ink,) * 3 if color else ink)
    image.save(path)
    return path


def test_read_image(tmp_path: Path) -> None:
    dark_on_white = read_image(_png(tmp_path / "a.png", ink_on_white=True), (1, 28, 28))
    assert dark_on_white.shape == (1, 28, 28) and dark_on_white.dtype == torch.float32
    assert float(dark_on_white.mean()) < 0.5, "auto inversion makes the strokes the bright foreground"
    bright_on_black = read_image(_png(tmp_path / "b.png", ink_on_white=False), (1, 28, 28))
    assert torch.allclose(dark_on_white, bright_on_black, atol=1.5 / 255)  # uint8 resampling rounds
    kept = read_image(tmp_path / "a.png", (1, 28, 28), invert="no")
    assert torch.allclose(kept, 1 - dark_on_white, atol=1e-6)
    rgb = read_image(_png(tmp_path / "c.png", ink_on_white=True, color=True), (3, 16, 16))
    assert rgb.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="not images"):
        read_image(tmp_path / "a.png", (8,))


@pytest.mark.parametrize(("channels", "invert"), [(1, True), (3, False)])
def test_read_image_decodes_like_the_folder_dataset(tmp_path: Path, channels: int, invert: bool) -> None:
    _png(tmp_path / "data" / "stroke" / "a.png", ink_on_white=True, size=37, color=channels == 3)
    dataset = fewcore.create(
        "dataset", "folder", root=str(tmp_path / "data"), image_size=(20, 24), channels=channels, invert=invert,
        disk_cache=False,
    )
    query = read_image(tmp_path / "data" / "stroke" / "a.png", (channels, 20, 24), invert="yes" if invert else "no")
    assert torch.equal(query, dataset.items("stroke")[0]), "a query is read exactly as the training images"


def test_read_support_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_support(tmp_path / "none", (1, 28, 28))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        read_support(tmp_path / "empty", (1, 28, 28))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        read_support(tmp_path / "empty", (1, 28, 28))
    _png(tmp_path / "ok" / "b" / "1.png", True)
    _png(tmp_path / "ok" / "a" / "1.png", True)
    _png(tmp_path / "ok" / "a" / "2.png", True)
    x, y, classes = read_support(tmp_path / "ok", (1, 28, 28))
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 0, 1] and classes == ["a", "b"]


def test_plot_run(trained_run: Path, tmp_path: Path) -> None:
    output = plot_run(trained_run)
    assert output == trained_run / "curves.png"
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert plot_run(trained_run, tmp_path / "x" / "c.png").is_file()
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(tmp_path / "empty")
