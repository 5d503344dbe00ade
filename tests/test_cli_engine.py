"""The engine's CLI: train, eval, plot, predict, demo (in-process, through fewcore.cli.main)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import fewcore
from fewcore.cli import main
from tests.engine._fakes import fakes  # noqa: F401 - a fixture, used through usefixtures

FAKE_TOML = """
[dataset]
name = "clusters"
[backbone]
name = "linear"
[learner]
name = "nearest"
[train]
steps = 8
n_way = 3
k_shot = 2
q_query = 3
log_every = 2
checkpoint_every = 4
[val]
every = 4
episodes = 10
setting = "3-way 1-shot"
q_query = 3
[eval]
episodes = 40
settings = ["3-way 1-shot", "3-way 2-shot"]
q_query = 3
"""


@pytest.fixture
def fake_toml(tmp_path: Path) -> Path:
    path = tmp_path / "fake.toml"
    path.write_text(FAKE_TOML)
    return path


@pytest.mark.usefixtures("fakes")
def test_train_eval_plot(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(fake_toml), "--run-dir", str(run), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best validation: step" in out and str(run / "checkpoints" / "best.pt") in out and "episodes/s" in out

    assert main(["eval", str(run), "--no-progress", "--set", "eval.episodes=20"]) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot: " in out and "3-way 2-shot: " in out and "(20 episodes)" in out and "±" in out
    report = json.loads((run / "eval.json").read_text())
    assert [r["setting"] for r in report["results"]] == ["3-way 1-shot", "3-way 2-shot"]
    assert all(0 <= r["accuracy"] <= 1 and r["ci95"] >= 0 and r["episodes"] == 20 for r in report["results"])

    assert main(["eval", str(run / "checkpoints" / "last.pt"), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("last.pt")

    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").is_file() and capsys.readouterr().out.strip().endswith("curves.png")


@pytest.mark.usefixtures("fakes")
def test_train_refuses_to_overwrite_and_resumes(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(tmp_path / "run")
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress"]) == 0
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress", "--resume", "--set", "train.steps=12"]) == 0
    assert "12 steps" in capsys.readouterr().out


@pytest.mark.usefixtures("fakes")
def test_train_overwrite_starts_a_finished_run_over(fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(fake_toml), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()
    capsys.readouterr()
    assert main(["train", str(fake_toml), "--run-dir", str(run), "--no-progress"]) == 2
    assert "start it over with --overwrite" in capsys.readouterr().err
    assert main(["train", str(fake_toml), "--run-dir", str(run), "--no-progress", "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # A different step count would be refused on resume; starting over accepts any config.
    assert main(["train", str(fake_toml), "--run-dir", str(run), "--no-progress", "--overwrite", "--set", "train.steps=4"]) == 0
    assert "4 steps" in capsys.readouterr().out
    assert not (run / "curves.png").exists(), "the old run's files must be gone"
    assert fewcore.engine.load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lrr=1"], "unknown key train.lrr; valid: "),
        (["--set", "learner.name=nope"], "unknown learner 'nope'; available: nearest"),
        (["--set", "backbone.width=3"], "[backbone] could not build backbone 'linear' with options (width)"),
        (["--set", "backbone.in_features=5"], "does not fit the dataset's items"),
    ],
)
def test_train_errors_are_one_line(
    fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["train", str(fake_toml), "--run-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewcore train: error: ") and message in err, err


@pytest.mark.usefixtures("fakes")
def test_eval_and_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "without checkpoints" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics" in capsys.readouterr().err


# End to end with the built-in components: glyphs → episodic sampler → Conv4 → Prototypical Networks.
TINY_DEMO = """
[dataset]
name = "glyphs"
alphabets = 10
characters = 10
drawings = 10
[backbone]
name = "conv4"
in_channels = 1
hidden_channels = 16
[learner]
name = "protonet"
[train]
steps = 30
n_way = 10
k_shot = 1
q_query = 5
lr = 0.003
checkpoint_every = 15
log_every = 5
[val]
every = 15
episodes = 10
q_query = 5
[eval]
episodes = 20
settings = ["5-way 1-shot", "5-way 5-shot"]
q_query = 5
"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny_demo.toml"
    config.write_text(TINY_DEMO)
    run = root / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--config", str(config), "--run-dir", str(run), "--no-progress", "--device", "cpu"])
    assert code == 0, out.getvalue()
    return run, out.getvalue()


def test_demo_trains_tests_and_reports(demo_run: tuple[Path, str]) -> None:
    run, out = demo_run
    for expected in ("5-way 1-shot: ", "5-way 5-shot: ", "± ", "(20 episodes)", "best validation: step",
                     f"checkpoint: {run / 'checkpoints' / 'best.pt'}", f"learning curves: {run / 'curves.png'}"):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"
    results = {r["setting"]: r for r in json.loads((run / "eval.json").read_text())["results"]}
    # Chance is 20%: the learner learned, on alphabets it never saw.
    assert results["5-way 1-shot"]["accuracy"] > 0.5, results
    assert results["5-way 5-shot"]["accuracy"] > results["5-way 1-shot"]["accuracy"] - 0.05, results
    assert (run / "curves.png").is_file() and (run / "metrics.csv").is_file()


def test_demo_reuses_a_finished_run(demo_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, first = demo_run
    config = run.parent / "tiny_demo.toml"
    assert main(["demo", "--config", str(config), "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    line = next(text for text in first.splitlines() if text.strip().startswith("5-way 1-shot"))
    assert line in again, "the same checkpoint and test episodes give the same accuracy"


def _save_png(image: torch.Tensor, path: Path, invert: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image[0] if not invert else 1 - image[0]).mul(255).round().byte().numpy()
    Image.fromarray(pixels, mode="L").save(path)


@pytest.mark.parametrize("invert", [False, True], ids=["ink-on-black", "dark-strokes-on-white"])
def test_predict_classifies_a_query_folder(
    demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], invert: bool
) -> None:
    run, _ = demo_run
    dataset = fewcore.create("dataset", "glyphs", alphabets=10, characters=10, drawings=10)
    classes = dataset.classes("test")[:: len(dataset.classes("test")) // 4][:4]
    truth = {}
    for c, name in enumerate(classes):
        items = dataset.items(name)
        label = f"class{c}"
        for i in range(2):
            _save_png(items[i], tmp_path / "support" / label / f"{i}.png", invert)
        for i in range(2, 5):
            path = tmp_path / "query" / f"{label}_{i}.png"
            _save_png(items[i], path, invert)
            truth[str(path)] = label
    assert main(["predict", "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"),
                 "--checkpoint", str(run), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert sorted(p["path"] for p in predictions) == sorted(truth)
    assert all(0.0 < p["score"] <= 1.0 for p in predictions)
    correct = sum(p["label"] == truth[p["path"]] for p in predictions)
    assert correct >= 8, f"{correct}/12 correct (chance is 3): {predictions}"

    assert main(["predict", "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"),
                 "--checkpoint", str(run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and all(len(line.split()) == 3 for line in lines)


def test_loaded_learner_embeds_a_batch(demo_run: tuple[Path, str]) -> None:
    learner = fewcore.load(demo_run[0])
    embeddings = learner.backbone(torch.rand(7, 1, 28, 28))
    assert embeddings.shape == (7, learner.backbone.embedding_size((1, 28, 28)))


def test_predict_errors(demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = demo_run
    args = ["predict", "--checkpoint", str(run), "--query", str(tmp_path)]
    assert main([*args, "--support", str(tmp_path / "missing")]) == 2
    assert "support folder" in capsys.readouterr().err
    (tmp_path / "support" / "a").mkdir(parents=True)
    _save_png(torch.zeros(1, 28, 28), tmp_path / "support" / "a" / "0.png")
    assert main([*args, "--support", str(tmp_path / "support")]) == 2  # the query folder has no images
    assert "no query images" in capsys.readouterr().err
