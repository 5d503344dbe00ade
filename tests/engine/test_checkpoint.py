"""Checkpoints: atomic writes, safe loads, RNG state round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fewcore.engine import CheckpointError, load_checkpoint, save_checkpoint
from fewcore.engine._checkpoint import MODEL_KEYS, load_weights, preserved_rng, rng_state, set_rng_state


def _draws() -> tuple[torch.Tensor, float, float]:
    return torch.rand(3), float(np.random.rand()), random.random()


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = _draws()
    _draws()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = _draws()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_preserved_rng() -> None:
    torch.manual_seed(0)
    with preserved_rng():
        torch.rand(5)
        np.random.rand()
        random.random()
    after = _draws()
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after[0])


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    save_checkpoint(path, {"step": 2, "w": torch.zeros(2)})
    payload = load_checkpoint(path)
    assert payload["step"] == 2 and torch.equal(payload["w"], torch.zeros(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


class _Payload:
    """An arbitrary object: unpickling it would run code a checkpoint must not be able to run."""


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fewcore_checkpoint": 1, "model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as caught:
        load_checkpoint(path)
    assert "_Payload" in str(caught.value)
    assert "weights_only" not in str(caught.value)  # torch's advice to unpickle anyway is never repeated


def test_a_truncated_checkpoint_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"not a complete checkpoint \(2000 bytes.*train again"):
        load_checkpoint(path)


def test_required_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "model": {}})
    with pytest.raises(CheckpointError, match="without 'config', 'item_shape', which every checkpoint of fewcore train"):
        load_checkpoint(path, require=MODEL_KEYS)


def test_weights_of_another_architecture_are_refused_with_the_differences(tmp_path: Path) -> None:
    state = torch.nn.Linear(3, 4).state_dict()
    with pytest.raises(CheckpointError, match=r"c.pt holds weights of another architecture .*size mismatch for weight.*retrain"):
        load_weights(torch.nn.Linear(3, 5), state, tmp_path / "c.pt", "retrain")


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format marker"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"fewcore_checkpoint": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
