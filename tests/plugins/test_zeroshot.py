"""Zero-shot learning: class descriptions, ESZSL and the compatibility model, Xian et al.'s metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fewcore
from fewcore import cli
from fewcore.plugins.datasets.glyphs import ATTRIBUTES
from fewcore.zeroshot import (
    ESZSL,
    AttributeTable,
    Compatibility,
    ZeroShotSplit,
    class_attributes,
    evaluate_zero_shot,
    harmonic_mean,
    per_class_accuracy,
    zero_shot_report,
    zero_shot_split,
)

#: a glyphs world small enough to generate in a moment: 8 seen alphabets (80 classes), 2 unseen (20)
SMALL_GLYPHS = {"alphabets": 10, "characters": 10, "drawings": 10}


@pytest.fixture(scope="module")
def glyph_split() -> ZeroShotSplit:
    return zero_shot_split(fewcore.create("dataset", "glyphs", **SMALL_GLYPHS), seed=0)


# --- class descriptions ---------------------------------------------------------------------


def test_glyphs_describe_every_character_by_its_generator_parameters() -> None:
    ds = fewcore.create("dataset", "glyphs", **SMALL_GLYPHS)
    names = ds.classes("train") + ds.classes("val") + ds.classes("test")
    described = class_attributes(ds, names)
    assert described.shape == (100, len(ATTRIBUTES))
    strokes = described[:, :4]
    assert torch.equal(strokes.sum(dim=1), torch.ones(100))  # one stroke count each
    ink = described[:, -36:]
    torch.testing.assert_close(ink.sum(dim=1), torch.ones(100))
    # characters are told apart by their descriptions
    assert len({tuple(row.tolist()) for row in described}) == 100


def test_tensors_attribute_matrix_rows_follow_sorted_labels() -> None:
    x = torch.randn(12, 3)
    y = [10, 2, 2, 10, 7, 7, 2, 10, 7, 2, 7, 10]
    ds = fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [2, 7], "test": [10]},
                        attributes=[[0.0, 2.0], [0.0, 7.0], [0.0, 10.0]])
    assert class_attributes(ds, ["10", "2"]).tolist() == [[0.0, 10.0], [0.0, 2.0]]
    mapped = fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [2, 7], "test": [10]},
                            attributes={2: [1.0], 7: [2.0], 10: [3.0]})
    assert class_attributes(mapped, ["7"]).tolist() == [[2.0]]


def test_tensors_attribute_errors_say_what_was_expected() -> None:
    x, y = torch.randn(4, 3), [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"one row per distinct label \(2"):
        fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [0], "test": [1]}, attributes=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"no vector for labels \['1'\]"):
        fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [0], "test": [1]}, attributes={0: [1.0]})
    plain = fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [0], "test": [1]})
    with pytest.raises(ValueError, match="carries no class descriptions"):
        class_attributes(plain, ["0"])


def test_attribute_table_rejects_mismatched_rows_and_names_unknown_classes() -> None:
    with pytest.raises(ValueError, match="3 rows but 2 class names"):
        AttributeTable(["a", "b"], torch.zeros(3, 4))
    with pytest.raises(KeyError, match="did you mean 'cat'"):
        AttributeTable(["cat", "dog"], torch.zeros(2, 4)).rows(["cta"])


def test_split_holds_out_seen_items_and_keeps_unseen_classes_unseen(glyph_split: ZeroShotSplit) -> None:
    s = glyph_split.n_seen_classes
    assert s == 80 and len(glyph_split.class_names) == 100
    assert set(glyph_split.train_y.tolist()) == set(range(s)) == set(glyph_split.seen_y.tolist())
    assert set(glyph_split.unseen_y.tolist()) == set(range(s, 100))
    assert len(glyph_split.train_x) == 80 * 8 and len(glyph_split.seen_x) == 80 * 2  # 20% of 10 drawings held out
    # no held-out drawing is also a training drawing
    train = {row.numpy().tobytes() for row in glyph_split.train_x.flatten(1)}
    assert not any(row.numpy().tobytes() in train for row in glyph_split.seen_x.flatten(1))


# --- metrics --------------------------------------------------------------------------------


def test_per_class_accuracy_weighs_classes_equally() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1])
    predictions = torch.tensor([0, 0, 0, 0, 0])  # class 0 all right, class 1 all wrong
    assert per_class_accuracy(predictions, labels) == pytest.approx(0.5)  # not 4/5


def test_harmonic_mean_and_report_intervals() -> None:
    assert float(harmonic_mean(0.6, 0.2)) == pytest.approx(0.3)
    assert float(harmonic_mean(0.0, 0.0)) == 0.0
    gen = torch.Generator().manual_seed(0)
    unseen_y = torch.arange(10, 20).repeat_interleave(20)
    seen_y = torch.arange(10).repeat_interleave(20)
    correct_u = torch.rand(200, generator=gen) < 0.4
    correct_s = torch.rand(200, generator=gen) < 0.8
    report = zero_shot_report(
        zsl_predictions=torch.where(correct_u, unseen_y, 10),
        unseen_labels=unseen_y,
        gzsl_seen_predictions=torch.where(correct_s, seen_y, 19),
        seen_labels=seen_y,
        gzsl_unseen_predictions=torch.where(correct_u, unseen_y, 0),
        resamples=500,
    )
    assert report.seen.value == pytest.approx(per_class_accuracy(torch.where(correct_s, seen_y, 19), seen_y))
    assert report.harmonic.value == pytest.approx(float(harmonic_mean(report.seen.value, report.unseen.value)))
    for estimate in (report.zsl, report.seen, report.unseen, report.harmonic):
        assert estimate.low <= estimate.value <= estimate.high
        assert 0.0 < estimate.high - estimate.low < 0.25


# --- learners -------------------------------------------------------------------------------


def test_eszsl_solves_the_papers_objective() -> None:
    """At V the gradient of ‖XᵀVS − Y‖² + γ‖VS‖² + λ‖XᵀV‖² + γλ‖V‖² (eq. 5's objective) vanishes."""
    gen = torch.Generator().manual_seed(0)
    x, attributes = torch.randn(40, 6, generator=gen), torch.randn(5, 3, generator=gen)
    y = torch.arange(40) % 5
    model = ESZSL(gamma=0.7, lam=2.0)
    model.fit(x, y, attributes)
    V = model.V.double().requires_grad_()
    X, S = x.double().T, attributes.double().T
    Y = torch.where(torch.nn.functional.one_hot(y, 5).bool(), 1.0, -1.0).double()
    objective = (
        (X.T @ V @ S - Y).square().sum() + 0.7 * (V @ S).square().sum()
        + 2.0 * (X.T @ V).square().sum() + 0.7 * 2.0 * V.square().sum()
    )
    (grad,) = torch.autograd.grad(objective, V)
    assert grad.abs().max() < 1e-3 * Y.abs().sum()


def test_eszsl_recognises_unseen_glyphs_far_above_chance(glyph_split: ZeroShotSplit) -> None:
    report = evaluate_zero_shot(ESZSL(gamma=1000.0, lam=0.003), glyph_split, resamples=200)
    chance = 1 / 20
    assert report.zsl.low > 3 * chance  # measured: 34%
    assert report.harmonic.value > 0.1


def test_compatibility_learns_unseen_glyphs_above_chance(glyph_split: ZeroShotSplit, one_thread: None) -> None:
    model = Compatibility(item_shape=(1, 28, 28), epochs=10, batch_size=64, lr=3e-3, weight_decay=1e-5)
    report = evaluate_zero_shot(model, glyph_split, resamples=200)
    assert report.zsl.low > 3 * (1 / 20)  # measured: 33%


def test_compatibility_trains_a_registered_backbone_jointly(glyph_split: ZeroShotSplit, one_thread: None) -> None:
    model = Compatibility(backbone="conv4", item_shape=(1, 28, 28), epochs=1, batch_size=64)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    model.fit(glyph_split.train_x[:128], glyph_split.train_y[:128], glyph_split.attributes[: glyph_split.n_seen_classes])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    scores = model.scores(glyph_split.unseen_x[:5], glyph_split.attributes)
    assert scores.shape == (5, 100) and torch.isfinite(scores).all()


# --- Xian et al.'s proposed-split files -----------------------------------------------------


def _write_xian(folder: Path, n_classes: int = 20, per_class: int = 20, n_unseen: int = 5) -> None:
    """A benchmark in the exact layout of res101.mat / att_splits.mat, features made from attributes."""
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    att = rng.random((8, n_classes)).astype(np.float32)  # [A, C]
    att /= np.linalg.norm(att, axis=0)  # unit columns, as in Xian et al.'s files
    projection = rng.standard_normal((2048, 8)).astype(np.float32)
    labels = np.repeat(np.arange(1, n_classes + 1), per_class)  # 1-based
    features = projection @ att[:, labels - 1] + 0.3 * rng.standard_normal((2048, labels.size)).astype(np.float32)
    numbers = np.arange(1, labels.size + 1)  # 1-based image numbers
    seen = labels <= n_classes - n_unseen
    held = seen & (numbers % 5 == 0)
    folder.mkdir(parents=True)
    scipy_io.savemat(folder / "res101.mat", {"features": features, "labels": labels[:, None]})
    names = np.empty((n_classes, 1), dtype=object)
    names[:, 0] = [f"{c:03d}.animal{c}" for c in range(1, n_classes + 1)]
    scipy_io.savemat(folder / "att_splits.mat", {
        "att": att,
        "trainval_loc": numbers[seen & ~held][:, None],
        "test_seen_loc": numbers[held][:, None],
        "test_unseen_loc": numbers[~seen][:, None],
        "train_loc": numbers[seen & ~held & (labels <= 10)][:, None],
        "val_loc": numbers[seen & ~held & (labels > 10)][:, None],
        "allclasses_names": names,
    })


def test_xian_reads_the_proposed_split_files(tmp_path: Path) -> None:
    _write_xian(tmp_path / "AWA2")
    ds = fewcore.create("dataset", "xian", root=str(tmp_path / "AWA2"))
    assert ds.item_shape == (2048,)
    assert ds.classes("train") == [f"{c:03d}.animal{c}" for c in range(1, 11)]
    assert ds.classes("val") == [f"{c:03d}.animal{c}" for c in range(11, 16)]
    assert ds.classes("test") == [f"{c:03d}.animal{c}" for c in range(16, 21)]
    assert ds.items("016.animal16").shape == (20, 2048)
    split = ds.zero_shot_split()
    assert split.n_seen_classes == 15 and len(split.train_x) == 15 * 16 and len(split.seen_x) == 15 * 4
    assert len(split.unseen_x) == 5 * 20 and split.attributes.shape == (20, 8)
    assert split.class_names[15] == "016.animal16" and int(split.unseen_y.min()) == 15
    report = evaluate_zero_shot(ESZSL(gamma=1.0, lam=1.0), split, resamples=100)
    assert report.zsl.low > 3 * (1 / 5)  # 5 unseen classes; measured: 94%


def test_xian_errors_name_the_problem(tmp_path: Path) -> None:
    pytest.importorskip("scipy.io")
    with pytest.raises(FileNotFoundError, match="res101.mat"):
        fewcore.create("dataset", "xian", root=str(tmp_path))
    _write_xian(tmp_path / "CUB")
    from scipy.io import savemat

    savemat(tmp_path / "CUB" / "att_splits.mat", {"att": np.ones((3, 20)), "trainval_loc": [[1]]})
    with pytest.raises(ValueError, match=r"lacks \['test_seen_loc', 'test_unseen_loc'\]"):
        fewcore.create("dataset", "xian", root=str(tmp_path / "CUB"))
    locations = {"trainval_loc": [[1]], "test_seen_loc": [[2]], "test_unseen_loc": [[401]]}  # 400 images
    savemat(tmp_path / "CUB" / "att_splits.mat", {"att": np.ones((3, 20)), **locations})
    with pytest.raises(ValueError, match=r"test_unseen_loc must hold image numbers 1..400 \(counted from 1\); got 401..401"):
        fewcore.create("dataset", "xian", root=str(tmp_path / "CUB"))


def test_cli_runs_the_xian_config_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_xian(tmp_path / "data" / "AWA2")
    config = Path(__file__).resolve().parents[2] / "configs" / "zsl" / "eszsl_xian.toml"
    argv = ["--data-dir", str(tmp_path / "data"), "zsl", str(config), "--set", "protocol.resamples=100", "--json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"config", "zsl", "seen", "unseen", "harmonic"}
    assert report["zsl"]["low"] > 3 * (1 / 5) and 0 <= report["harmonic"]["low"] <= report["harmonic"]["value"]
    assert cli.main(argv[:-1]) == 0
    assert "GZSL  harmonic mean H" in capsys.readouterr().out


def test_cli_reports_a_bad_zero_shot_config_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[dataset]\nname = "glyphs"\n[model]\nname = "nope"\n')
    assert cli.main(["zsl", str(config)]) == 2
    assert "unknown zero-shot model 'nope'; known: eszsl, compat" in capsys.readouterr().err
