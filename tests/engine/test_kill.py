"""A training process killed with SIGKILL and resumed ends exactly where an uninterrupted run does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewcore.config import Config
from fewcore.engine import MetricsLog, RunDirError, load_checkpoint, train
from tests.conftest import REPO_ROOT
from tests.engine._fakes import fake_config_dict

STEPS = 40
#: not a divisor of the checkpoint period (4), so a checkpoint falls inside a log window
LOG_EVERY = 3
#: fields of metrics.jsonl that measure time, so no two runs share them
TIMINGS = ("elapsed_s", "episodes_per_s")

# Trains the fake run of fake_config_dict, slowed down so that the test can kill it mid-run.
CHILD = f"""
import sys, time
from fewcore.config import Config
from fewcore.engine import train
from tests.engine._fakes import fake_config_dict, fake_registry
config = Config.from_dict(fake_config_dict(sys.argv[1], steps={STEPS}, log_every={LOG_EVERY}))
train(config, progress=False, on_step=lambda step, learner: time.sleep(0.05), registry=fake_registry())
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkilled_run_resumes_to_the_uninterrupted_result(fakes, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(killed)], cwd=REPO_ROOT)
    last = killed / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 120
        while not (last.exists() and load_checkpoint(last)["step"] >= 8):
            assert child.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "the training process made no progress"
            time.sleep(0.02)
        # A second training in the same directory is refused while the first one runs ...
        with pytest.raises(RunDirError, match=f"in use by another training \\(pid {child.pid} "):
            train(Config.from_dict(fake_config_dict(str(killed), steps=STEPS, log_every=LOG_EVERY)), resume=True, progress=False)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(last)["step"]
    assert 8 <= stopped_at < STEPS, "the kill came too late to test anything"

    config = fake_config_dict(str(killed), steps=STEPS, log_every=LOG_EVERY)
    # ... and the kill releases the lock, so the resume starts at once.
    resumed = train(Config.from_dict(config), resume=True, progress=False)
    whole = train(Config.from_dict(fake_config_dict(str(tmp_path / "whole"), steps=STEPS, log_every=LOG_EVERY)), progress=False)
    assert resumed.steps == whole.steps == STEPS
    a, b = load_checkpoint(resumed.last_checkpoint), load_checkpoint(whole.last_checkpoint)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["best"] == b["best"]
    assert _logged(resumed.run_dir) == _logged(whole.run_dir), "the logs continue exactly too"


def _logged(run_dir: Path) -> list[dict[str, object]]:
    """The metrics records of a run without their timings."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in MetricsLog(run_dir).read()]


class _Stop(Exception):
    """Stands for the process dying after a step."""


def test_metrics_after_a_resume_equal_an_uninterrupted_run(fakes, tmp_path: Path) -> None:
    def stop_at_5(step: int, learner: object) -> None:
        if step == 5:  # last.pt holds step 4, inside the log window of steps 4-6
            raise _Stop

    data = fake_config_dict(str(tmp_path / "cut"), steps=9, log_every=LOG_EVERY)
    with pytest.raises(_Stop):
        train(Config.from_dict(data), progress=False, on_step=stop_at_5)
    resumed = train(Config.from_dict(data), resume=True, progress=False)
    whole = train(Config.from_dict(fake_config_dict(str(tmp_path / "whole"), steps=9, log_every=LOG_EVERY)), progress=False)
    rows = _logged(whole.run_dir)
    assert [r["step"] for r in rows if r["phase"] == "train"] == [3, 6, 9]
    assert _logged(resumed.run_dir) == rows
