"""Training loop: outputs, learning, exact resume, run-directory safety."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fewcore import Component
from fewcore._plugins import PluginInfo
from fewcore.config import Config, ConfigError
from fewcore.engine import ResumeError, evaluate, load_checkpoint, train
from fewcore.engine._build import build_dataset, build_learner, build_optimizer
from tests.engine._fakes import IndexSampler, fake_config_dict

#: metrics that depend on the wall clock, not on what was computed
TIMING = ("episodes_per_s", "elapsed_s")


def _config(run_dir: Path, **train_options: Any) -> Config:
    return Config.from_dict(fake_config_dict(str(run_dir), **train_options))


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def test_train_writes_the_run_directory(fakes, tmp_path: Path) -> None:
    result = train(_config(tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    assert result.steps == 12 and result.run_dir == run
    assert json.loads((run / "config.json").read_text())["learner"] == {"name": "nearest"}
    records = _records(run)
    assert [r["step"] for r in records if r["phase"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in records if r["phase"] == "val"] == [4, 8, 12]
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,phase,loss,accuracy,ci95")
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + len(records)
    last = load_checkpoint(result.last_checkpoint)
    assert last["step"] == 12 and {"model", "optimizer", "scheduler", "ranks"} <= last.keys()
    best = load_checkpoint(result.best_checkpoint)
    val = [r for r in records if r["phase"] == "val"]
    top = max(val, key=lambda r: r["accuracy"])
    assert best["step"] == result.best_step == min(r["step"] for r in val if r["accuracy"] == top["accuracy"])
    assert not list((run / "checkpoints").glob(".*tmp")), "a temporary checkpoint file was left behind"


def test_training_improves_test_accuracy(fakes, tmp_path: Path) -> None:
    # Noisy clusters: the untrained embedding is poor, a trained one separates unseen classes.
    config = Config.from_dict(
        {**fake_config_dict(str(tmp_path / "run"), steps=60, lr=0.01), "dataset": {"name": "clusters", "noise": 1.5}}
    )
    torch.manual_seed(0)
    dataset = build_dataset(config)
    untrained = build_learner(config, dataset.item_shape)
    settings = ["3-way 1-shot"]
    before = evaluate(untrained, dataset, settings, episodes=100, q_query=3)[0]
    result = train(config, progress=False)
    trained = build_learner(config, dataset.item_shape)
    trained.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    after = evaluate(trained, dataset, settings, episodes=100, q_query=3)[0]
    assert after.accuracy > before.accuracy + 2 * (before.ci95 + after.ci95), (before, after)


class _Killed(Exception):
    pass


def _kill_at(step: int):
    def on_step(current: int, learner: object) -> None:
        if current == step:
            raise _Killed

    return on_step


@pytest.mark.parametrize("kill_at", [6, 8])  # between two checkpoints; right after one
def test_resume_equals_uninterrupted(fakes, tmp_path: Path, kill_at: int) -> None:
    options = {"scheduler": "step", "step_size": 3, "gamma": 0.5}  # the LR schedule's state matters too
    whole = train(_config(tmp_path / "whole", **options), progress=False)
    with pytest.raises(_Killed):
        train(_config(tmp_path / "cut", **options), progress=False, on_step=_kill_at(kill_at))
    assert load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["step"] == 4 * (kill_at // 4)
    resumed = train(_config(tmp_path / "cut", **options), resume=True, progress=False)

    assert resumed.steps == whole.steps and resumed.best_step == whole.best_step
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "whole/checkpoints" / name)
        b = load_checkpoint(tmp_path / "cut/checkpoints" / name)
        for key in ("model", "optimizer", "scheduler", "step", "best"):
            if key in a:
                _assert_same_tensors(a[key], b[key], key)
        if "ranks" in a:
            _assert_same_tensors(a["ranks"], b["ranks"], "ranks")
    # The log has each step once, with the same values as the uninterrupted run.
    assert _records(tmp_path / "cut") == _records(tmp_path / "whole")


def test_resume_can_extend_training(fakes, tmp_path: Path) -> None:
    whole = train(_config(tmp_path / "whole", steps=16), progress=False)
    train(_config(tmp_path / "short", steps=8), progress=False)
    extended = train(_config(tmp_path / "short", steps=16), resume=True, progress=False)
    assert extended.steps == 16
    a = load_checkpoint(whole.last_checkpoint)["model"]
    b = load_checkpoint(extended.last_checkpoint)["model"]
    _assert_same_tensors(a, b, "model")


def test_validation_does_not_change_training(fakes, tmp_path: Path) -> None:
    with_val = train(_config(tmp_path / "a"), progress=False)
    data = fake_config_dict(str(tmp_path / "b"))
    data["val"]["every"] = 0
    without_val = train(Config.from_dict(data), progress=False)
    _assert_same_tensors(
        load_checkpoint(with_val.last_checkpoint)["model"], load_checkpoint(without_val.last_checkpoint)["model"]
    )
    # Without validation, best.pt is the final model.
    assert load_checkpoint(without_val.best_checkpoint)["step"] == 12


def test_same_seed_same_run_other_seed_other_run(fakes, tmp_path: Path) -> None:
    a = load_checkpoint(train(_config(tmp_path / "a"), progress=False).last_checkpoint)["model"]
    b = load_checkpoint(train(_config(tmp_path / "b"), progress=False).last_checkpoint)["model"]
    c = load_checkpoint(train(_config(tmp_path / "c", seed=1), progress=False).last_checkpoint)["model"]
    _assert_same_tensors(a, b)
    assert not torch.equal(a["backbone.layer.weight"], c["backbone.layer.weight"])


def test_existing_run_is_not_overwritten(fakes, tmp_path: Path) -> None:
    train(_config(tmp_path / "run"), progress=False)
    with pytest.raises(ResumeError, match="already holds a run.*--resume"):
        train(_config(tmp_path / "run"), progress=False)


def test_resume_refuses_a_different_config(fakes, tmp_path: Path) -> None:
    train(_config(tmp_path / "run", steps=4), progress=False)
    with pytest.raises(ResumeError, match=r"differs in train\.lr"):
        train(_config(tmp_path / "run", steps=8, lr=0.5), resume=True, progress=False)


def test_a_cosine_schedule_cannot_be_extended(fakes, tmp_path: Path) -> None:
    train(_config(tmp_path / "run", steps=4, scheduler="cosine"), progress=False)
    with pytest.raises(ResumeError, match="cosine schedule spans train.steps"):
        train(_config(tmp_path / "run", steps=8, scheduler="cosine"), resume=True, progress=False)


def test_resume_without_checkpoint_starts_over(fakes, tmp_path: Path) -> None:
    result = train(_config(tmp_path / "run", steps=4), resume=True, progress=False)
    assert result.steps == 4


def test_non_finite_loss_is_reported(fakes, tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match=r"loss is (nan|-?inf) at step \d"):
        train(_config(tmp_path / "run", lr=1e30, steps=3, optimizer="sgd", momentum=0.0), progress=False)


def test_training_sampler_options_reach_only_the_training_sampler(fakes, tmp_path: Path) -> None:
    seen: dict[str, dict[str, Any]] = {}

    def recording(*, flip: bool = False, **kwargs: Any) -> IndexSampler:
        seen[kwargs["split"]] = {"flip": flip, "seed": kwargs["seed"]}
        return IndexSampler(**kwargs)

    fakes.add(Component("sampler", "recording", recording, PluginInfo("t", "<tests>", "")))
    data = fake_config_dict(str(tmp_path / "run"), steps=4, seed=3, sampler_options={"flip": True})
    data["sampler"] = {"name": "recording"}
    train(Config.from_dict(data), progress=False)
    # The test sampler is built too, before the first step, to check the [eval] settings against the data.
    assert seen == {"train": {"flip": True, "seed": 3}, "val": {"flip": False, "seed": 1}, "test": {"flip": False, "seed": 2}}


def test_a_learner_without_trainable_parameters_is_refused_before_training(tmp_path: Path) -> None:
    # a frozen backbone under a learner with no weights of its own left torch's
    # "optimizer got an empty parameter list" traceback
    config = Config.from_dict(fake_config_dict(str(tmp_path)))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(config.train, [p for p in frozen.parameters() if p.requires_grad])
