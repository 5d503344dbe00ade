"""``--threads N`` of ``fewcore train``, ``eval`` and ``predict``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewcore.cli import main
from fewcore.cli._main import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "exp.toml"],
        ["eval", "runs/x"],
        ["predict", "--support", "s", "--query", "q", "--checkpoint", "c.pt"],
    ],
)
def test_train_eval_and_predict_take_a_thread_count(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args([*argv, "--threads", "3"]).threads == 3
    assert build_parser().parse_args(argv).threads is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--threads", "0"])
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err


def test_the_thread_count_is_set_before_the_command_runs(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        # The command fails (no such checkpoint) after the thread count is set.
        assert main(["eval", str(tmp_path / "missing.pt"), "--threads", str(wanted)]) == 2
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
