"""Precision and memory format: resolved per device, applied by the engine in every phase, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import fewcore
from fewcore import Component, Episode, LearnerOutput
from fewcore._plugins import PluginInfo
from fewcore.config import Config
from fewcore.engine import ResumeError, evaluate, load_checkpoint, train
from fewcore.engine._build import build_dataset
from fewcore.engine._checkpoint import save_checkpoint
from fewcore.engine._precision import ComputeMode, _cpu_has_native_bfloat16
from tests.engine._fakes import NearestMean, fake_config_dict
from tests.engine.test_train import _assert_same_tensors, _kill_at, _Killed


def test_auto_is_the_measured_default_of_each_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = ComputeMode.resolve("auto", "auto", "cpu")
    assert cpu.precision == ("bf16" if _cpu_has_native_bfloat16() else "fp32") and cpu.channels_last
    monkeypatch.setattr("fewcore.engine._precision._cpu_has_native_bfloat16", lambda: False)
    assert ComputeMode.resolve("auto", "auto", "cpu").precision == "fp32"
    # No GPU was measured: CUDA keeps float32 and the default format (a device object needs no GPU).
    cuda = ComputeMode.resolve("auto", "auto", "cuda")
    assert (cuda.precision, cuda.channels_last) == ("fp32", False)
    explicit = ComputeMode.resolve("fp16", False, "cpu")
    assert (explicit.precision, explicit.channels_last) == ("fp16", False)


@pytest.mark.parametrize(("precision", "channels_last"), [("fp64", True), ("bf16", "yes")])
def test_unknown_values_are_refused(precision: str, channels_last: Any) -> None:
    with pytest.raises(ValueError, match="precision must be one of|channels_last must be"):
        ComputeMode.resolve(precision, channels_last, "cpu")


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_computes_products_in_the_chosen_dtype(precision: str, dtype: torch.dtype) -> None:
    a = torch.randn(4, 4)
    with ComputeMode.resolve(precision, False, "cpu").autocast():
        assert (a @ a).dtype == dtype


def test_prepare_sets_the_memory_format_of_convolutions_in_place() -> None:
    learner = fewcore.create(
        "learner", "protonet", backbone=fewcore.create("backbone", "conv4", in_channels=1), item_shape=(1, 28, 28)
    )
    weights = [p for p in learner.parameters() if p.dim() == 4]
    before = [w.detach().clone() for w in weights]
    ComputeMode.resolve("fp32", True, "cpu").prepare(learner)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # (a 1-channel weight is both)
    assert all(torch.equal(w, b) for w, b in zip(weights, before))
    ComputeMode.resolve("fp32", False, "cpu").prepare(learner)
    assert all(w.is_contiguous() for w in weights)


class _Recording(NearestMean):
    """Records the autocast state of every forward: ``(phase, enabled, dtype)``."""

    calls: list[tuple[str, bool, torch.dtype]] = []

    def forward(self, episode: Episode) -> LearnerOutput:
        phase = "train" if self.training else "eval"
        _Recording.calls.append((phase, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(episode)


@pytest.fixture
def recording(fakes: Any) -> list[tuple[str, bool, torch.dtype]]:
    _Recording.calls = []
    fakes.add(Component("learner", "recording", _Recording, PluginInfo("t", "<tests>", "")))
    return _Recording.calls


def _config(run_dir: Path, learner: str = "nearest", **train_options: Any) -> Config:
    data = fake_config_dict(str(run_dir), **train_options)
    data["learner"] = {"name": learner}
    return Config.from_dict(data)


def test_training_and_validation_run_under_the_training_precision(recording: list, tmp_path: Path) -> None:
    train(_config(tmp_path / "run", "recording", steps=4, precision="bf16"), progress=False)
    assert {call[0] for call in recording} == {"train", "eval"}  # validation ran too
    assert all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in recording)


def test_evaluation_runs_under_its_own_precision(recording: list, tmp_path: Path) -> None:
    config = _config(tmp_path / "run", "recording")
    learner = _Recording(fewcore.create("backbone", "linear"))
    for precision, expected in (("fp32", (False,)), ("fp16", (True, torch.float16))):
        recording.clear()
        evaluate(learner, build_dataset(config), ["3-way 1-shot"], episodes=3, q_query=3, precision=precision)
        assert recording and all(call[1 : 1 + len(expected)] == expected for call in recording)


def test_float16_training_resumes_exactly_with_its_gradient_scaler(fakes: Any, tmp_path: Path) -> None:
    options = {"precision": "fp16", "steps": 8}
    whole = train(_config(tmp_path / "whole", **options), progress=False)
    with pytest.raises(_Killed):
        train(_config(tmp_path / "cut", **options), progress=False, on_step=_kill_at(6))
    train(_config(tmp_path / "cut", **options), resume=True, progress=False)
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    # The scaler's growth tracker counts steps since its last change: a fresh scaler would differ.
    assert {"scale", "_growth_tracker"} <= a["grad_scaler"].keys()
    for key in ("model", "optimizer", "grad_scaler"):
        _assert_same_tensors(a[key], b[key], key)


def test_a_run_saved_before_the_options_resumes_only_as_it_computed(fakes: Any, tmp_path: Path) -> None:
    # Such a run computed in float32, channels-first, and saved no gradient scaler.
    train(_config(tmp_path / "run", steps=4, precision="fp32", channels_last=False), progress=False)
    last = tmp_path / "run/checkpoints/last.pt"
    payload = load_checkpoint(last)
    for key in ("precision", "channels_last"):
        del payload["config"]["train"][key]
    del payload["grad_scaler"]
    save_checkpoint(last, {k: v for k, v in payload.items() if k != "fewcore_checkpoint"})
    with pytest.raises(ResumeError, match=r"differs in train\.channels_last, train\.precision"):
        train(_config(tmp_path / "run", steps=8), resume=True, progress=False)
    resumed = train(_config(tmp_path / "run", steps=8, precision="fp32", channels_last=False), resume=True, progress=False)
    assert resumed.steps == 8
