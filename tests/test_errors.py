"""The error contract: every mistake a user can make ends with exit status 2 and one paragraph
that names the file, option or component and what to do; never a traceback (issue 16).

Engine mistakes run over the fake components (fast); dataset, backbone, eval and predict
mistakes over the built-in folder dataset, Conv4 and Prototypical Networks on 16x16 images.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import fewcore
from fewcore.cli import main
from fewcore.engine import load_checkpoint, save_checkpoint
from fewcore.engine._rundir import run_lock
from tests.engine._fakes import fakes  # noqa: F401 - a fixture, used by name

FAKE_TOML = """
[dataset]
name = "clusters"
[backbone]
name = "linear"
[learner]
name = "nearest"
[train]
steps = 4
n_way = 3
k_shot = 2
q_query = 3
log_every = 2
checkpoint_every = 2
device = "cpu"
[val]
every = 2
episodes = 4
setting = "3-way 1-shot"
q_query = 3
[eval]
episodes = 4
settings = ["3-way 1-shot"]
q_query = 3
"""


def fails(capsys: pytest.CaptureFixture[str], args: list[str], *expected: str) -> str:
    """Run ``fewcore ARGS``; assert exit status 2, no traceback, and each expected text in one message."""
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}; stderr: {err}"
    assert "Traceback" not in out + err
    assert err.startswith("fewcore ") and ": error: " in err, err
    assert err.count("\n") == 1, f"the message should be one paragraph: {err!r}"
    for text in expected:
        assert text in err, f"{text!r} not in: {err}"
    return err


@pytest.fixture
def fake_toml(tmp_path: Path) -> Path:
    path = tmp_path / "fake.toml"
    path.write_text(FAKE_TOML)
    return path


def _train_args(config: Path, run: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--run-dir", str(run), "--no-progress", *extra]


# ---------------------------------------------------------------- config and options


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rate(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    fails(capsys, _train_args(fake_toml, tmp_path / "run", "--set", f"train.lr={value}"), "train.lr must be a finite number")


@pytest.mark.usefixtures("fakes")
def test_config_path_that_is_a_directory(fake_toml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["train", str(fake_toml.parent)], f"config path {fake_toml.parent} is a directory", str(fake_toml))


@pytest.mark.usefixtures("fakes")
def test_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[dataset]\nname = "caf\u00e9"\n'.encode("latin-1"))
    fails(capsys, ["train", str(path)], f"{path} is not UTF-8 text", "save the file with UTF-8 encoding")


@pytest.mark.usefixtures("fakes")
def test_run_dir_that_is_a_file(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.write_text("not a directory")
    fails(capsys, _train_args(fake_toml, run), f"the run directory {run} is a file", "--run-dir")


def test_unknown_op_implementation(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FEWCORE_OPS", "fast")
    code = main(["info"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "FEWCORE_OPS must be one of compiled, reference; got 'fast'" in err and "unset it" in err


@pytest.mark.usefixtures("fakes")
def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fewcore.config.ConfigError, match="is a directory"):
        main(["--debug", "train", str(tmp_path)])
    monkeypatch.setenv("FEWCORE_DEBUG", "1")
    with pytest.raises(fewcore.config.ConfigError, match="is a directory"):
        main(["train", str(tmp_path)])


# ---------------------------------------------------------------- training


@pytest.mark.usefixtures("fakes")
def test_loss_that_becomes_non_finite(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _train_args(fake_toml, tmp_path / "run", "--set", "train.lr=1e30", "--set", 'train.optimizer="sgd"',
                       "--set", "train.momentum=0.0")
    fails(capsys, args, "the training loss is", "lower train.lr or set train.grad_clip", "--overwrite")


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize(
    ("override", "key", "split"),
    [('val.setting="20-way 1-shot"', "val.setting '20-way 1-shot'", "'val'"),
     ('eval.settings=["3-way 1-shot", "12-way 1-shot"]', "eval.settings '12-way 1-shot'", "'test'")],
)
def test_settings_the_data_cannot_serve_fail_before_the_first_step(
    fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, key: str, split: str
) -> None:
    run = tmp_path / "run"
    fails(capsys, _train_args(fake_toml, run, "--set", override), f"{key} does not fit the {split} split", "fewer ways")
    assert not (run / "checkpoints").exists(), "nothing was trained, so nothing poisons the run directory"
    # Fixed, the same command in the same directory trains.
    assert main(_train_args(fake_toml, run)) == 0


@pytest.mark.usefixtures("fakes")
def test_a_second_training_in_one_run_directory_is_refused(
    fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with run_lock(run):  # as a training in another process holds it
        fails(capsys, _train_args(fake_toml, run), f"the run directory {run} is in use by another training",
              f"pid {os.getpid()}", "--run-dir")
    assert main(_train_args(fake_toml, run)) == 0, "the lock is released with its holder"
    # --overwrite starts over in the held directory without deleting the lock.
    assert main(_train_args(fake_toml, run, "--overwrite")) == 0
    assert (run / ".lock").is_file()


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def fake_run(request: pytest.FixtureRequest, fake_toml: Path, tmp_path: Path) -> Path:
    request.getfixturevalue("fakes")
    run = tmp_path / "run"
    assert main(_train_args(fake_toml, run)) == 0
    return run


def test_checkpoint_of_another_architecture(fake_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = fake_run / "checkpoints" / "best.pt"
    payload = load_checkpoint(best)
    payload["config"]["backbone"]["out_features"] = 32  # as if the component had changed since training
    save_checkpoint(best, {k: v for k, v in payload.items() if k != "fewcore_checkpoint"})
    fails(capsys, ["eval", str(fake_run)], f"{best} holds weights of another architecture", "size mismatch",
          "load it with the fewcore and plugins that trained it")


def test_checkpoint_without_a_config(fake_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bare.pt"
    payload = load_checkpoint(fake_run / "checkpoints" / "best.pt")
    save_checkpoint(path, {"model": payload["model"], "item_shape": payload["item_shape"], "step": 4})
    fails(capsys, ["eval", str(path)], f"{path} is a fewcore checkpoint without 'config'", "fewcore train")


def test_truncated_checkpoint(fake_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = fake_run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    fails(capsys, ["eval", str(best)], f"{best} is not a complete checkpoint", "checkpoints/last.pt")
    last = fake_run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    fails(capsys, _train_args(fake_run.parent / "fake.toml", fake_run, "--resume"), f"{last} is not a complete checkpoint")


class _Code:
    """Unpickling this would run code."""


def test_unsafe_pickle_is_refused_without_suggesting_weights_only_false(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fewcore_checkpoint": 1, "config": _Code()}, path)
    err = fails(capsys, ["eval", str(path)], f"{path} holds pickled Python objects", "_Code")
    assert "weights_only" not in err


# ---------------------------------------------------------------- the built-in components on images


IMAGE_TOML = """
[dataset]
name = "folder"
root = "{root}"
image_size = 16
channels = 1
disk_cache = false
[backbone]
name = "conv4"
hidden_channels = 8
[learner]
name = "protonet"
[train]
steps = 2
n_way = 2
k_shot = 1
q_query = 1
log_every = 1
checkpoint_every = 2
device = "cpu"
[val]
every = 2
episodes = 2
setting = "2-way 1-shot"
q_query = 1
[eval]
episodes = 6
settings = ["2-way 1-shot"]
q_query = 1
"""


def _write_images(folder: Path, classes: int, per_class: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for c in range(classes):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(16, 16, generator=gen) * 255).byte().numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"c{c}" / f"{i}.png")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run directory) of two steps of Conv4 + Prototypical Networks on 10 classes of noise."""
    root = tmp_path_factory.mktemp("images")
    _write_images(root / "data", classes=10, per_class=3)
    config = root / "images.toml"
    config.write_text(IMAGE_TOML.format(root=(root / "data").as_posix()))
    assert main(_train_args(config, root / "run")) == 0
    return config, root / "run"


def test_dangling_and_looping_symbolic_links_in_a_dataset(
    image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = image_run
    data = tmp_path / "data"
    _write_images(data, classes=2, per_class=2)
    dangling = data / "c0" / "dangling.png"
    dangling.symlink_to(data / "c0" / "gone.png")
    args = _train_args(config, tmp_path / "run", "--set", f'dataset.root="{data.as_posix()}"')
    fails(capsys, args, "[dataset] could not build dataset 'folder'", f"image {dangling} is a symbolic link to",
          "which does not exist", "remove the link or restore its target")
    dangling.unlink()
    loop = data / "c1" / "loop.png"
    loop.symlink_to(loop)
    fails(capsys, args, f"image {loop} is a symbolic link to {loop}, which loops back on itself")
    loop.unlink()
    (tmp_path / "root-loop").symlink_to(tmp_path / "root-loop")
    fails(capsys, _train_args(config, tmp_path / "run", "--set", f'dataset.root="{(tmp_path / "root-loop").as_posix()}"'),
          "[dataset]", "is a symbolic link loop")


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), 200).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "damaged inside"])
def test_omniglot_root_that_is_not_a_complete_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    path = tmp_path / "images_background.zip"
    member = "images_background/Greek/character01/01.png"
    if damage == "not a zip":
        path.write_text("<html>the download page, not the file</html>")
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for i in range(20):
                archive.writestr(f"images_background/Greek/character{i:02d}/01.png", _png())
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:  # flip a byte of the first member's compressed data
            data[data.index(member.encode()) + len(member) + 4] ^= 0xFF
        path.write_bytes(bytes(data))
    omniglot = tmp_path / "omniglot.toml"
    omniglot.write_text(
        f'[dataset]\nname = "omniglot"\nroot = "{path.as_posix()}"\ndisk_cache = false\n'
        '[backbone]\nname = "conv4"\n[learner]\nname = "protonet"\n'
    )
    if damage == "damaged inside":
        expected = f"the zip {path} is damaged at {member}"
    else:
        expected = f"image source {path} is a file but not a readable zip"
    fails(capsys, _train_args(omniglot, tmp_path / "run"), "[dataset] could not build dataset 'omniglot'", expected)


def test_negative_backbone_size(image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = image_run
    fails(capsys, _train_args(config, tmp_path / "run", "--set", "backbone.hidden_channels=-4"),
          "[backbone]", "hidden_channels must be an integer >= 1; got -4")


def _eval(run: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> dict[str, float]:
    args = ["eval", str(run), "--json", "--no-progress", "--output", str(run.parent / "eval-test.json")]
    assert main([*args, *(x for o in overrides for x in ("--set", o))]) == 0
    return json.loads(capsys.readouterr().out)["results"][0]


def test_eval_applies_learner_overrides_and_refuses_the_meaningless(
    image_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = image_run
    default, cosine = _eval(run, capsys), _eval(run, capsys, 'learner.distance="cosine"')
    assert cosine["loss"] != default["loss"], "the override changed the learner, so the numbers change"
    fails(capsys, ["eval", str(run), "--set", 'learner.distance="nope"'], "[learner]", "distance must be one of")
    fails(capsys, ["eval", str(run), "--set", "backbone.hidden_channels=16"], "holds weights of another architecture",
          "the overrides of backbone.hidden_channels change the architecture")
    fails(capsys, ["eval", str(run), "--set", "train.lr=0.1"], "[train] does not affect evaluation", "remove it")


def test_predict_with_a_corrupt_image(image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, run = image_run
    _write_images(tmp_path / "support", classes=2, per_class=1)
    (tmp_path / "query").mkdir()
    bad = tmp_path / "query" / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is missing")
    fails(capsys, ["predict", "--checkpoint", str(run), "--support", str(tmp_path / "support"), "--query", str(bad)],
          f"cannot decode image {bad}", "replace it with a PNG or JPEG file")


@pytest.mark.parametrize("learner", ["protonet", "matching", "maml", "siamese", "mann"])
def test_predict_on_one_task_without_its_batch_dimension(learner: str) -> None:
    shape = (1, 16, 16)
    model = fewcore.create("learner", learner, backbone=fewcore.create("backbone", "conv4", item_shape=shape), item_shape=shape)
    with pytest.raises(ValueError, match=r"got support_x \(10, 1, 16, 16\), support_y \(10,\).*support_x\[None\]"):
        model.predict(torch.rand(10, *shape), torch.arange(5).repeat(2), torch.rand(4, *shape))
