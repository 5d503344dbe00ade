"""Conformance checks for fewcore components, for plugin authors and for fewcore's own tests.

Each ``check_*`` function builds a component from its factory, runs it on a tiny input and raises
``AssertionError`` with an explanation at the first broken contract; it returns the component it
built. fewcore runs the same checks on every registered component
(``tests/test_conformance.py``); run them on yours in your own tests::

    from fewcore.testing import check_backbone, check_learner

    def test_my_backbone():
        check_backbone(MyBackbone, input_shape=(3, 32, 32), width=16)

    def test_my_learner():
        check_learner(MyLearner, backbone_factory=MyBackbone, input_shape=(3, 32, 32))

What is checked:

* backbones: ``[batch, *input_shape]`` → ``[batch, embedding_size(input_shape)]``, finite; every
  parameter gets a finite gradient; in eval mode items do not influence each other; the same
  seed gives the same outputs and gradients; a backbone with feature maps gives
  ``forward_features`` of the shape ``feature_shape`` promises.
* learners: the learner keeps its backbone as ``.backbone``; ``forward(episode)`` gives
  ``logits [B, N*Q, N]`` and a scalar loss, finite; the loss reaches every parameter (backbone
  included) with finite gradients; ``predict`` gives
  ``[B, Nq, N]`` scores ranking classes as ``forward`` does; the same seed gives the same numbers.
* datasets: ``item_shape`` is a tuple of positive ints; ``train``/``val``/``test`` name disjoint,
  unique classes and an unknown split is a ``ValueError``; ``items`` are float32
  ``[n, *item_shape]``, finite, the same on every call; an unknown class is an error; the same
  config builds the same classes.
* samplers: episodes of the promised shapes from the requested split's classes only, each class
  with K support and Q query items under one shuffled label; the same seed gives the same
  episodes, another seed others; ``state_dict`` resumes the stream exactly and survives a
  ``weights_only`` save/load; too few classes is a ``ValueError``.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any, Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from fewcore._plugins import Registry, get_plugin_manager, use_registry
from fewcore._types import Backbone, Episode, EpisodeSampler, FewShotDataset, Learner, LearnerOutput

__all__ = [
    "ToyDataset",
    "check_backbone",
    "check_dataset",
    "check_learner",
    "check_sampler",
    "random_episode",
]

# This module is also a pytest plugin (entry point ``pytest11``: ``fewcore.testing``), so any
# project with fewcore installed gets the fixtures below without a conftest.


def _name(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)


def _assert_equal(actual: Tensor, expected: Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{what}:\n{m}")


def _assert_finite(tensor: Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise AssertionError(f"{what} has {bad} non-finite values (NaN or inf) out of {tensor.numel()}")


def _gradients(module: nn.Module, who: str) -> dict[str, Tensor]:
    """Every trainable parameter's gradient; fails on a missing or non-finite one."""
    gradients = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            raise AssertionError(
                f"{who}: parameter {name!r} got no gradient from the loss (is it unused, or detached?)"
            )
        _assert_finite(parameter.grad, f"{who}: gradient of {name!r}")
        gradients[name] = parameter.grad.detach().clone()
    if gradients and all(not g.any() for g in gradients.values()):
        raise AssertionError(f"{who}: every gradient is zero")
    return gradients


def random_episode(
    item_shape: Sequence[int],
    n_way: int = 3,
    k_shot: int = 2,
    q_query: int = 2,
    batch_size: int = 2,
    seed: int = 0,
) -> Episode:
    """A random episode batch with shuffled labels (standard-normal items).

    Args:
        item_shape: shape of one item, e.g. ``(1, 28, 28)``.
        n_way: N, classes per task.
        k_shot: K, support items per class.
        q_query: Q, query items per class.
        batch_size: B, tasks per batch.
        seed: the items and label orders are a function of it.

    Returns:
        An :class:`~fewcore.Episode` with ``support_x [B, N*K, *item_shape]``, ``support_y [B, N*K]``,
        ``query_x [B, N*Q, *item_shape]``, ``query_y [B, N*Q]``; in every task each label
        ``0..N-1`` occurs K times in the support set and Q times in the queries, in random order.
    """
    generator = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> Tensor:
        ordered = torch.arange(n_way).repeat(per_class)
        return torch.stack([ordered[torch.randperm(len(ordered), generator=generator)] for _ in range(batch_size)])

    support_y, query_y = labels(k_shot), labels(q_query)
    shape = tuple(item_shape)
    support_x = torch.randn(batch_size, n_way * k_shot, *shape, generator=generator)
    query_x = torch.randn(batch_size, n_way * q_query, *shape, generator=generator)
    return Episode(support_x, support_y, query_x, query_y, n_way=n_way, k_shot=k_shot)


def check_backbone(
    factory: Callable[..., Backbone],
    input_shape: Sequence[int] | None = None,
    *,
    batch_size: int = 4,
    seed: int = 0,
    **config: Any,
) -> Backbone:
    """Check a backbone against the :class:`~fewcore.Backbone` contract.

    Args:
        factory: builds the backbone as ``factory(item_shape=input_shape, **config)`` (as the
            engine does with the dataset's item shape), or ``factory(**config)`` without one.
        input_shape: one item's shape; defaults to the backbone's ``example_input_shape``.
        batch_size: items per checked batch (at least 2).
        seed: seeds construction and inputs.
        **config: keyword arguments for ``factory``.

    Returns:
        The backbone built (in eval mode).

    Raises:
        AssertionError: a broken contract, explained.
    """
    who = _name(factory)

    def build() -> Backbone:
        torch.manual_seed(seed)
        backbone = factory(**config) if input_shape is None else factory(item_shape=tuple(input_shape), **config)
        if not isinstance(backbone, Backbone):
            raise AssertionError(f"{who} built a {type(backbone).__name__}, not a fewcore.Backbone subclass")
        return backbone

    def train_step(backbone: Backbone, x: Tensor, weights: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        backbone.train()
        backbone.zero_grad(set_to_none=True)
        out = backbone(x)
        if out.shape != weights.shape:
            raise AssertionError(
                f"{who} mapped {tuple(x.shape)} to {tuple(out.shape)}; expected [batch, embedding_size] = "
                f"{tuple(weights.shape)}"
            )
        _assert_finite(out, f"{who} output")
        # A random projection of the output as the loss, so every output unit matters.
        (out * weights).sum().backward()
        return out.detach(), _gradients(backbone, who)

    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (batch norm needs it in train mode); got {batch_size}")
    backbone = build()
    shape = tuple(input_shape) if input_shape is not None else tuple(backbone.example_input_shape)
    size = backbone.embedding_size(shape)
    if not isinstance(size, int) or size < 1:
        raise AssertionError(f"{who}.embedding_size({shape}) must be a positive int; got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *shape, generator=generator)
    weights = torch.randn(batch_size, size, generator=generator)

    out, gradients = train_step(backbone, x, weights)
    again, gradients_again = train_step(build(), x, weights)
    _assert_equal(again, out, f"{who}: the same seed gave different outputs")
    for name, gradient in gradients.items():
        _assert_equal(gradients_again[name], gradient, f"{who}: the same seed gave a different gradient of {name!r}")

    backbone.eval()
    with torch.no_grad():
        whole = backbone(x)
        alone = backbone(x[:1])
    _assert_finite(whole, f"{who} output in eval mode")
    # Kernels may sum in a batch-dependent order: allow rounding relative to the embedding's
    # largest value (a deep float32 net differs by ~1e-6 of it), not to each, maybe tiny, element.
    rounding = 100 * torch.finfo(whole.dtype).eps * max(1.0, whole.abs().max().item())
    torch.testing.assert_close(
        alone[0],
        whole[0],
        rtol=0,
        atol=rounding,
        msg=lambda m: f"{who}: in eval mode an item's embedding depends on the rest of its batch:\n{m}",
    )
    if type(backbone).forward_features is not Backbone.forward_features:
        with torch.no_grad():
            maps = backbone.forward_features(x)
        promised = (batch_size, *backbone.feature_shape(shape))
        if tuple(maps.shape) != promised:
            raise AssertionError(
                f"{who}.forward_features mapped {tuple(x.shape)} to {tuple(maps.shape)}; feature_shape promises "
                f"[batch, *feature_shape] = {promised}"
            )
        _assert_finite(maps, f"{who} feature maps")
    return backbone


def check_learner(
    factory: Callable[..., Learner],
    backbone_factory: Callable[..., Backbone],
    input_shape: Sequence[int] | None = None,
    *,
    backbone_config: dict[str, Any] | None = None,
    n_way: int = 3,
    k_shot: int = 2,
    q_query: int = 2,
    batch_size: int = 2,
    seed: int = 0,
    **config: Any,
) -> Learner:
    """Check a learner against the :class:`~fewcore.Learner` contract on a random episode batch.

    Args:
        factory: builds the learner as ``factory(backbone=backbone, item_shape=input_shape,
            **config)`` (as the engine does), or without ``item_shape`` when none is given.
        backbone_factory: builds its backbone as ``backbone_factory(item_shape=input_shape,
            **backbone_config)``, or without ``item_shape`` when none is given.
        input_shape: one item's shape; defaults to the backbone's ``example_input_shape``.
        backbone_config: keyword arguments for ``backbone_factory``.
        n_way: the episode's N, classes per task.
        k_shot: the episode's K, support items per class.
        q_query: the episode's Q, query items per class.
        batch_size: the episode's B, tasks per batch.
        seed: seeds construction and the episode.
        **config: keyword arguments for ``factory``.

    Returns:
        The learner built (in eval mode).

    Raises:
        AssertionError: a broken contract, explained.
    """
    who = _name(factory)

    def build() -> Learner:
        torch.manual_seed(seed)
        shape_option = {} if input_shape is None else {"item_shape": tuple(input_shape)}
        backbone = backbone_factory(**shape_option, **(backbone_config or {}))
        learner = factory(backbone=backbone, **shape_option, **config)
        if not isinstance(learner, Learner):
            raise AssertionError(f"{who} built a {type(learner).__name__}, not a fewcore.Learner subclass")
        return learner

    def train_step(learner: Learner, episode: Episode) -> tuple[LearnerOutput, dict[str, Tensor]]:
        learner.train()
        learner.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # a stochastic learner draws the same numbers both times
        output = learner(episode)
        if not isinstance(output, LearnerOutput):
            raise AssertionError(f"{who}.forward returned a {type(output).__name__}, not a fewcore.LearnerOutput")
        if output.logits.shape != expected:
            raise AssertionError(
                f"{who}: logits have shape {tuple(output.logits.shape)}; expected [B, N*Q, N] = {expected}"
            )
        if output.loss.dim() != 0:
            raise AssertionError(f"{who}: the loss must be a scalar; got shape {tuple(output.loss.shape)}")
        _assert_finite(output.logits, f"{who} logits")
        _assert_finite(output.loss, f"{who} loss")
        output.loss.backward()
        return output, _gradients(learner, who)

    learner = build()
    shape = tuple(input_shape) if input_shape is not None else tuple(_backbone_of(learner, who).example_input_shape)
    episode = random_episode(shape, n_way, k_shot, q_query, batch_size, seed)
    expected = (batch_size, n_way * q_query, n_way)

    output, gradients = train_step(learner, episode)
    backbone_parameters = {id(p) for p in _backbone_of(learner, who).parameters() if p.requires_grad}
    reached = {id(p) for p in learner.parameters() if p.grad is not None}
    if backbone_parameters - reached:
        raise AssertionError(f"{who}: the loss does not reach the backbone's parameters")

    output_again, gradients_again = train_step(build(), episode)
    _assert_equal(output_again.logits, output.logits, f"{who}: the same seed gave different logits")
    _assert_equal(output_again.loss, output.loss, f"{who}: the same seed gave a different loss")
    for name, gradient in gradients.items():
        _assert_equal(gradients_again[name], gradient, f"{who}: the same seed gave a different gradient of {name!r}")

    learner.eval()
    torch.manual_seed(seed)
    scores = learner.predict(episode.support_x, episode.support_y, episode.query_x).detach()
    if scores.shape != expected:
        raise AssertionError(f"{who}.predict gave scores of shape {tuple(scores.shape)}; expected [B, Nq, N] = {expected}")
    _assert_finite(scores, f"{who}.predict scores")
    torch.manual_seed(seed)
    logits = learner(episode).logits.detach()
    if not torch.equal(scores.argmax(-1), logits.argmax(-1)):
        raise AssertionError(f"{who}: in eval mode, predict and forward rank the classes differently")
    return learner


def _backbone_of(learner: Learner, who: str) -> Backbone:
    """The learner's ``backbone`` attribute (where ``factory(backbone=...)`` keeps it)."""
    backbone = getattr(learner, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise AssertionError(f"{who} must keep the backbone it was built with as its .backbone attribute")
    return backbone


class ToyDataset(FewShotDataset):
    """A tiny in-memory dataset whose items encode their class, for checking samplers.

    Every item of class ``c`` (``c`` counts over all splits) is filled with the value
    ``c * items_per_class + i`` for its index ``i``, so :meth:`class_of` can tell which class an
    item in an episode came from.

    Args:
        classes_per_split: classes in each of ``train``, ``val`` and ``test`` (disjoint).
        items_per_class: items of every class.
        item_shape: shape of one item.
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, classes_per_split: int = 6, items_per_class: int = 8, item_shape: Sequence[int] = (1, 4, 4)) -> None:
        self.classes_per_split = classes_per_split
        self.items_per_class = items_per_class
        self._item_shape = tuple(item_shape)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self._item_shape

    def classes(self, split: str) -> list[str]:
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {', '.join(self.SPLITS)}; got {split!r}")
        first = self.SPLITS.index(split) * self.classes_per_split
        return [f"class{c:03d}" for c in range(first, first + self.classes_per_split)]

    def items(self, class_name: str) -> Tensor:
        index = int(class_name.removeprefix("class"))
        values = torch.arange(self.items_per_class, dtype=torch.float32) + index * self.items_per_class
        return values.view(-1, *[1] * len(self._item_shape)).expand(-1, *self._item_shape).clone()

    def class_of(self, items: Tensor) -> Tensor:
        """``[..., *item_shape]`` items → ``[...]`` names' indices (``c`` of ``class{c:03d}``)."""
        first = items.flatten(items.dim() - len(self._item_shape))[..., 0]
        return torch.div(first.round().long(), self.items_per_class, rounding_mode="floor")


def check_sampler(
    factory: Callable[..., EpisodeSampler],
    dataset: ToyDataset | None = None,
    *,
    split: str = "train",
    n_way: int = 3,
    k_shot: int = 2,
    q_query: int = 2,
    batch_size: int = 2,
    seed: int = 0,
    episodes: int = 3,
    **config: Any,
) -> EpisodeSampler:
    """Check an episode sampler against the :class:`~fewcore.EpisodeSampler` contract.

    Args:
        factory: builds the sampler as ``factory(dataset=..., split=..., n_way=..., k_shot=...,
            q_query=..., batch_size=..., seed=..., **config)``.
        dataset: a :class:`ToyDataset` (default: 6 classes per split, 8 items each, 1×4×4).
        split: passed to ``factory``.
        n_way: passed to ``factory``.
        k_shot: passed to ``factory``.
        q_query: passed to ``factory``.
        batch_size: passed to ``factory``.
        seed: passed to ``factory``.
        episodes: how many episode batches to draw and compare (at least 2).
        **config: further keyword arguments for ``factory``.

    Returns:
        The sampler built.

    Raises:
        AssertionError: a broken contract, explained.
    """
    who = _name(factory)
    dataset = dataset if dataset is not None else ToyDataset()
    if episodes < 2:
        raise ValueError(f"episodes must be at least 2 (to check resuming); got {episodes}")

    def build(**overrides: Any) -> EpisodeSampler:
        arguments: dict[str, Any] = dict(
            dataset=dataset, split=split, n_way=n_way, k_shot=k_shot, q_query=q_query,
            batch_size=batch_size, seed=seed,
        )
        sampler = factory(**{**arguments, **config, **overrides})
        if not isinstance(sampler, EpisodeSampler):
            raise AssertionError(f"{who} built a {type(sampler).__name__}, not a fewcore.EpisodeSampler subclass")
        return sampler

    def draw(sampler: EpisodeSampler, count: int) -> list[Episode]:
        drawn = list(itertools.islice(iter(sampler), count))
        if len(drawn) != count:
            raise AssertionError(f"{who} yielded {len(drawn)} episode batches; expected at least {count}")
        return drawn

    def assert_same(a: list[Episode], b: list[Episode], what: str) -> None:
        for i, (x, y) in enumerate(zip(a, b)):
            for field in ("support_x", "support_y", "query_x", "query_y"):
                _assert_equal(getattr(x, field), getattr(y, field), f"{who}: {what} (episode {i}, {field})")

    sampler = build()
    stream = draw(sampler, episodes)
    split_classes = {int(name.removeprefix("class")) for name in dataset.classes(split)}
    for index, episode in enumerate(stream):
        _check_episode(who, index, episode, dataset, split_classes, n_way, k_shot, q_query, batch_size)
    first_labels = stream[0].support_y[0]
    if all(torch.equal(task, first_labels) for episode in stream for task in episode.support_y):
        raise AssertionError(
            f"{who}: every task has the same support label sequence {first_labels.tolist()}; labels must be "
            "assigned to classes in random order, never by position"
        )

    assert_same(draw(build(), episodes), stream, "the same seed gave different episodes")
    other = draw(build(seed=seed + 1), episodes)
    if all(torch.equal(a.support_x, b.support_x) for a, b in zip(stream, other)):
        raise AssertionError(f"{who}: seeds {seed} and {seed + 1} gave the same episodes")

    # Stop after one batch, save, and resume in a new sampler: the stream must go on unchanged.
    interrupted = build()
    iterator = iter(interrupted)
    next(iterator)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = build()
    resumed.load_state_dict(state)
    assert_same(draw(resumed, episodes - 1), stream[1:], "resuming from state_dict() changed the stream")

    too_many = len(split_classes) + 1
    try:
        draw(build(n_way=too_many), 1)
    except ValueError:
        pass
    else:
        raise AssertionError(
            f"{who}: asking for {too_many}-way episodes from a split of {len(split_classes)} classes must "
            "raise ValueError"
        )
    return sampler


def _check_episode(
    who: str,
    index: int,
    episode: Episode,
    dataset: ToyDataset,
    split_classes: set[int],
    n_way: int,
    k_shot: int,
    q_query: int,
    batch_size: int,
) -> None:
    """One episode batch from a :class:`ToyDataset`: shapes, label counts, class consistency."""
    where = f"{who}, episode {index}"
    if not isinstance(episode, Episode):
        raise AssertionError(f"{where}: yielded a {type(episode).__name__}, not a fewcore.Episode")
    shapes = {
        "support_x": (episode.support_x.shape, (batch_size, n_way * k_shot, *dataset.item_shape)),
        "support_y": (episode.support_y.shape, (batch_size, n_way * k_shot)),
        "query_x": (episode.query_x.shape, (batch_size, n_way * q_query, *dataset.item_shape)),
        "query_y": (episode.query_y.shape, (batch_size, n_way * q_query)),
    }
    for field, (actual, expected) in shapes.items():
        if tuple(actual) != expected:
            raise AssertionError(f"{where}: {field} has shape {tuple(actual)}; expected {expected}")
    if (episode.n_way, episode.k_shot) != (n_way, k_shot):
        raise AssertionError(f"{where}: n_way, k_shot = {episode.n_way}, {episode.k_shot}; expected {n_way}, {k_shot}")
    for field in ("support_y", "query_y"):
        if getattr(episode, field).dtype != torch.int64:
            raise AssertionError(f"{where}: {field} must be int64; got {getattr(episode, field).dtype}")
    support_class = dataset.class_of(episode.support_x)
    query_class = dataset.class_of(episode.query_x)
    for task in range(batch_size):
        for labels, classes, per_class, part in (
            (episode.support_y[task], support_class[task], k_shot, "support"),
            (episode.query_y[task], query_class[task], q_query, "query"),
        ):
            counts = torch.bincount(labels, minlength=n_way)
            if len(counts) != n_way or not (counts == per_class).all():
                raise AssertionError(
                    f"{where}, task {task}: {part} label counts {counts.tolist()}; expected {per_class} of each 0..{n_way - 1}"
                )
            foreign = set(classes.tolist()) - split_classes
            if foreign:
                raise AssertionError(f"{where}, task {task}: {part} items from classes outside the split: {sorted(foreign)}")
        label_to_class: dict[int, int] = {}
        for label, cls in itertools.chain(
            zip(episode.support_y[task].tolist(), support_class[task].tolist()),
            zip(episode.query_y[task].tolist(), query_class[task].tolist()),
        ):
            if label_to_class.setdefault(label, cls) != cls:
                raise AssertionError(
                    f"{where}, task {task}: label {label} marks items of two classes ({label_to_class[label]} and {cls})"
                )
        if len(set(label_to_class.values())) != n_way:
            raise AssertionError(f"{where}, task {task}: two labels share a class: {label_to_class}")
        support_items = set(episode.support_x[task].flatten(1)[:, 0].tolist())
        query_items = set(episode.query_x[task].flatten(1)[:, 0].tolist())
        if len(support_items) != n_way * k_shot or support_items & query_items:
            raise AssertionError(f"{where}, task {task}: an item is repeated within the support set or also a query")


def check_dataset(
    dataset: FewShotDataset | Callable[..., FewShotDataset],
    *,
    classes_per_split: int = 3,
    **config: Any,
) -> FewShotDataset:
    """Check a dataset against the :class:`~fewcore.FewShotDataset` contract.

    Args:
        dataset: a dataset, or its factory, called as ``factory(**config)`` (twice: the same
            config must give the same classes).
        classes_per_split: how many classes of each split have their items read and checked.
        **config: keyword arguments for the factory.

    Returns:
        The dataset checked.

    Raises:
        AssertionError: a broken contract, explained.
    """
    factory = None if isinstance(dataset, FewShotDataset) else dataset
    built = dataset if factory is None else factory(**config)
    who = _name(factory) if factory is not None else type(built).__name__
    if not isinstance(built, FewShotDataset):
        raise AssertionError(f"{who} built a {type(built).__name__}, not a fewcore.FewShotDataset subclass")
    shape = built.item_shape
    if not isinstance(shape, tuple) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise AssertionError(f"{who}.item_shape must be a non-empty tuple of positive ints; got {shape!r}")

    splits = {split: built.classes(split) for split in ToyDataset.SPLITS}
    for split, names in splits.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise AssertionError(f"{who}.classes({split!r}) must be a list of class names (str); got {names!r:.80}")
        if len(set(names)) != len(names):
            raise AssertionError(f"{who}.classes({split!r}) names a class twice")
    if not any(splits.values()):
        raise AssertionError(f"{who} has no class in any split")
    for first, second in itertools.combinations(ToyDataset.SPLITS, 2):
        shared = sorted(set(splits[first]) & set(splits[second]))
        if shared:
            raise AssertionError(f"{who}: classes {shared[:3]} are in both the {first!r} and the {second!r} split")
    try:
        built.classes("no-such-split")
    except ValueError:
        pass
    else:
        raise AssertionError(f"{who}.classes('no-such-split') must raise ValueError for an unknown split")

    for split, names in splits.items():
        for name in names[:classes_per_split]:
            items = built.items(name)
            what = f"{who}.items({name!r}) of the {split!r} split"
            if not isinstance(items, Tensor) or items.dtype != torch.float32:
                raise AssertionError(f"{what} must be a float32 tensor; got {getattr(items, 'dtype', type(items).__name__)}")
            if items.dim() != 1 + len(shape) or tuple(items.shape[1:]) != shape or items.shape[0] < 1:
                raise AssertionError(f"{what} has shape {tuple(items.shape)}; expected [n >= 1, *item_shape] = [n, *{shape}]")
            _assert_finite(items, what)
            _assert_equal(built.items(name), items, f"{what}: a second call gave other items")
    try:
        built.items("no-such-class")
    except (KeyError, ValueError):
        pass
    else:
        raise AssertionError(f"{who}.items('no-such-class') must raise KeyError or ValueError for an unknown class")

    if factory is not None:
        again = factory(**config)
        for split, names in splits.items():
            if again.classes(split) != names:
                raise AssertionError(f"{who}: the same config gave other {split!r} classes on a second build")
    return built


@pytest.fixture
def fewcore_registry() -> Iterator[Registry]:
    """A fresh registry of the installed plugins' components, current for the test.

    Components a test adds (``fewcore_registry.add(Component(...))``) are seen by
    :func:`fewcore.create`, the engine and the CLI until the test ends; nothing else changes.
    """
    registry = Registry.from_plugins(*get_plugin_manager())
    with use_registry(registry):
        yield registry


@pytest.fixture
def toy_dataset() -> ToyDataset:
    """A :class:`ToyDataset`: 6 classes per split, 8 items of shape ``(1, 4, 4)`` each."""
    return ToyDataset()
