"""The episodic sampler: shapes, label shuffling, determinism, resume, workers, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import fewcore
from fewcore import Episode, FewShotDataset


def identity_dataset(n_classes: int = 12, n_items: int = 8, splits: dict[str, list[str]] | None = None) -> Any:
    """A tensors dataset whose item ``[class, item]`` says which class and which item it is."""
    x = torch.tensor([[c, i] for c in range(n_classes) for i in range(n_items)], dtype=torch.float32)
    y = [c for c in range(n_classes) for _ in range(n_items)]
    if splits is None:
        splits = {"train": [str(c) for c in range(n_classes)]}
    return fewcore.create("dataset", "tensors", x=x, y=y, splits=splits)


def sampler(dataset: Any, **config: Any) -> Any:
    settings: dict[str, Any] = dict(split="train", n_way=5, k_shot=2, q_query=3, batch_size=4, seed=0)
    settings.update(config)
    return fewcore.create("sampler", "episodic", dataset=dataset, **settings)


def assert_same(a: Episode, b: Episode) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_shapes_and_label_counts() -> None:
    glyphs = fewcore.create("dataset", "glyphs", alphabets=4, characters=5, drawings=6)
    episode = next(iter(sampler(glyphs, batch_size=3)))
    assert episode.support_x.shape == (3, 10, 1, 28, 28)
    assert episode.query_x.shape == (3, 15, 1, 28, 28)
    assert episode.support_y.shape == (3, 10) and episode.query_y.shape == (3, 15)
    assert episode.support_y.dtype == torch.int64 and episode.query_y.dtype == torch.int64
    assert (episode.n_way, episode.k_shot, episode.q_query, episode.batch_size) == (5, 2, 3, 3)
    for b in range(3):
        assert torch.bincount(episode.support_y[b], minlength=5).tolist() == [2] * 5
        assert torch.bincount(episode.query_y[b], minlength=5).tolist() == [3] * 5


def _task_classes(x: Tensor, y: Tensor) -> dict[int, set[int]]:
    """label → the dataset classes of the items carrying it, in one task."""
    found: dict[int, set[int]] = {}
    for item, label in zip(x.tolist(), y.tolist()):
        found.setdefault(label, set()).add(int(item[0]))
    return found


def test_labels_name_one_class_each_and_items_do_not_repeat() -> None:
    episode = next(iter(sampler(identity_dataset(), batch_size=8)))
    for b in range(8):
        support = _task_classes(episode.support_x[b], episode.support_y[b])
        query = _task_classes(episode.query_x[b], episode.query_y[b])
        assert all(len(classes) == 1 for classes in support.values())
        assert support == query  # a query's label is the label of its class's support items
        assert len({next(iter(c)) for c in support.values()}) == 5  # five distinct classes
        items = [tuple(v) for v in torch.cat([episode.support_x[b], episode.query_x[b]]).tolist()]
        assert len(set(items)) == len(items)  # K + Q distinct items per class


def test_labels_are_not_positional() -> None:
    episodes = list(sampler(identity_dataset(), batch_size=4, num_batches=10))
    positional_s = torch.arange(5).repeat_interleave(2)
    positional_q = torch.arange(5).repeat_interleave(3)
    support_y = torch.cat([e.support_y for e in episodes])
    query_y = torch.cat([e.query_y for e in episodes])
    # the label at a position varies across tasks: no fixed label order in the sets
    assert not (support_y == positional_s).all(dim=1).any()
    assert not (query_y == positional_q).all(dim=1).any()
    assert all(len(set(support_y[:, j].tolist())) > 1 for j in range(10))
    # label 0 is not always the class that comes first in the dataset
    label0_is_smallest = []
    for e in episodes:
        for b in range(e.batch_size):
            classes = _task_classes(e.support_x[b], e.support_y[b])
            label0_is_smallest.append(min(classes[0]) == min(min(c) for c in classes.values()))
    assert not all(label0_is_smallest)


def test_same_seed_same_episodes_and_other_seed_differs() -> None:
    data = identity_dataset()
    first = list(sampler(data, num_batches=5))
    again = list(sampler(data, num_batches=5))
    other = list(sampler(data, num_batches=5, seed=1))
    for a, b in zip(first, again):
        assert_same(a, b)
    assert not all(torch.equal(a.support_x, b.support_x) for a, b in zip(first, other))
    # batch i is a function of (seed, i): random access agrees with iteration
    assert_same(sampler(data).episode(3), first[3])


@pytest.mark.parametrize("augment", [False, True])
def test_workers_give_the_same_stream(augment: bool) -> None:
    glyphs = fewcore.create("dataset", "glyphs", alphabets=4, characters=5, drawings=6)
    in_process = list(sampler(glyphs, num_batches=5, augment=augment))
    with_workers = sampler(glyphs, num_batches=5, augment=augment, num_workers=2)
    streamed = list(with_workers)
    assert len(streamed) == 5
    for a, b in zip(in_process, streamed):
        assert_same(a, b)
    # resumed with workers: the stream goes on from the saved position
    with_workers.load_state_dict({"next": 2, "seed": 0})
    resumed = list(with_workers)
    assert len(resumed) == 3
    for a, b in zip(in_process[2:], resumed):
        assert_same(a, b)


def test_resume_continues_the_stream_exactly() -> None:
    data = identity_dataset()
    uninterrupted = list(sampler(data, num_batches=8))
    first = sampler(data, num_batches=8)
    stream = iter(first)
    head = [next(stream) for _ in range(3)]
    state = first.state_dict()
    assert state["next"] == 3
    resumed = sampler(data, num_batches=8)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == 8
    for a, b in zip(head + tail, uninterrupted):
        assert_same(a, b)
    assert resumed.state_dict()["next"] == 0  # a finished pass starts over
    assert_same(next(iter(resumed)), uninterrupted[0])


def test_resume_refuses_another_seed() -> None:
    data = identity_dataset()
    with pytest.raises(ValueError, match="seed 0 but this sampler has seed 1"):
        sampler(data, seed=1).load_state_dict(sampler(data).state_dict())


def test_length_of_a_finite_sampler() -> None:
    data = identity_dataset()
    assert len(sampler(data, num_batches=7)) == 7
    with pytest.raises(TypeError, match="endless"):
        len(sampler(data))


def test_too_few_classes_says_how_many() -> None:
    with pytest.raises(ValueError, match=r"split 'train' has 4 classes, fewer than the 5 a 5-way task needs"):
        sampler(identity_dataset(n_classes=4))


def test_too_few_items_names_the_class() -> None:
    x = torch.randn(6 * 5 + 3, 4)
    y = [c for c in range(6) for _ in range(5)] + [6, 6, 6]
    data = fewcore.create("dataset", "tensors", x=x, y=y, splits={"train": [str(c) for c in range(7)]})
    with pytest.raises(ValueError, match=r"class '6' of split 'train' has 3 items, fewer than the 5 needed"):
        sampler(data)


class _Overlapping(FewShotDataset):
    """A third-party dataset whose val split repeats a train class."""

    item_shape = (2,)

    def classes(self, split: str) -> list[str]:
        return {"train": ["a", "b", "c"], "val": ["c", "d"], "test": []}[split]

    def items(self, class_name: str) -> Tensor:
        return torch.zeros(10, 2)


def test_overlapping_splits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"splits 'train' and 'val' share 1 classes \(e.g. 'c'\)"):
        sampler(_Overlapping(), n_way=2)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"n_way": 0}, "n_way must be an integer >= 1"),
        ({"k_shot": 1.5}, "k_shot must be an integer >= 1"),
        ({"augment": True}, r"augment needs image items \[C, H, W\]"),
    ],
)
def test_bad_configuration(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampler(identity_dataset(), **config)


def test_unknown_augment_option() -> None:
    glyphs = fewcore.create("dataset", "glyphs", alphabets=2, characters=5, drawings=6)
    with pytest.raises(ValueError, match=r"unknown augment options \['rotation'\]"):
        sampler(glyphs, augment={"rotation": 5.0})


def test_augment_distorts_images_reproducibly() -> None:
    glyphs = fewcore.create("dataset", "glyphs", alphabets=4, characters=5, drawings=6)
    plain = sampler(glyphs).episode(0)
    distorted = sampler(glyphs, augment={"rotate": 15.0, "translate": 0.1}).episode(0)
    again = sampler(glyphs, augment={"rotate": 15.0, "translate": 0.1}).episode(0)
    assert_same(distorted, again)
    # the same items and labels, distorted: similar ink, different pixels
    assert torch.equal(plain.support_y, distorted.support_y)
    assert not torch.equal(plain.support_x, distorted.support_x)
    assert distorted.support_x.min() >= 0 and distorted.support_x.max() <= 1
    ink_ratio = distorted.support_x.sum(dim=(2, 3, 4)) / plain.support_x.sum(dim=(2, 3, 4))
    assert ((ink_ratio > 0.6) & (ink_ratio < 1.5)).all()
    # zero distortion is the identity
    identity = sampler(glyphs, augment={"rotate": 0, "scale": 0, "shear": 0, "translate": 0}).episode(0)
    torch.testing.assert_close(identity.support_x, plain.support_x, atol=1e-5, rtol=0)
