"""The engine's CLI: train, eval, plot, predict, demo (in-process, through fewcore.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewcore.cli import main
from tests.engine._fakes import fakes  # noqa: F401 - fixture

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


def test_train_eval_plot(fakes, fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_train_refuses_to_overwrite_and_resumes(fakes, fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(tmp_path / "run")
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress"]) == 0
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", str(fake_toml), "--run-dir", run, "--no-progress", "--resume", "--set", "train.steps=12"]) == 0
    assert "12 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lrr=1"], "unknown key train.lrr; valid: "),
        (["--set", "learner.name=nope"], "unknown learner 'nope'; available: nearest"),
        (["--set", "backbone.width=3"], "[backbone] could not build backbone 'linear' with options (width)"),
        (["--set", "backbone.in_features=5"], "does not fit the dataset's items"),
    ],
)
def test_train_errors_are_one_line(fakes, fake_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["train", str(fake_toml), "--run-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewcore train: error: ") and message in err, err


def test_eval_and_plot_errors(fakes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "without checkpoints" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics" in capsys.readouterr().err
