"""Built-in episode samplers, registered through the `fewcore` entry-point group like any third party's.

``episodic``: N-way K-shot Q-query tasks (Vinyals et al. 2016, "Matching Networks for One Shot
Learning": training episodes mimic the test condition), B tasks per batch. Batch ``i`` of a
sampler is computed from a generator seeded by ``(seed, i)`` alone, so the stream is the same
whether it is produced in this process or by DataLoader workers, and resuming from a saved
position continues it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import count
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fewcore import Episode, EpisodeSampler, FewShotDataset, hookimpl
from fewcore.hookspecs import Register
from fewcore.plugins._seed import generator

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AffineAugment:
    """Small random affine distortions of image items, drawn independently per item.

    Each item is rotated by up to ``rotate`` degrees, scaled by a factor in
    ``[1 - scale, 1 + scale]``, sheared by up to ``shear`` and shifted by up to ``translate``
    (a fraction of the image size), then resampled bilinearly with zero padding (the background
    of ink-on-zero images such as Omniglot and glyphs).

    Attributes:
        rotate: largest rotation, degrees.
        scale: largest relative change of size.
        shear: largest shear factor.
        translate: largest shift, as a fraction of the image's half-size.
    """

    rotate: float = 10.0
    scale: float = 0.1
    shear: float = 0.1
    translate: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"augment {f.name} must be non-negative; got {getattr(self, f.name)}")

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Distort a batch of images.

        Args:
            x: ``[M, C, H, W]`` float images.
            gen: the generator the distortions are drawn from.

        Returns:
            ``[M, C, H, W]`` distorted images.
        """
        m = x.shape[0]
        uniform = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731 - in [-1, 1]
        angle = math.radians(self.rotate) * uniform(m)
        scale = 1 + self.scale * uniform(m)
        shear = self.shear * uniform(m)
        shift = self.translate * uniform(m, 2)
        cos, sin = angle.cos(), angle.sin()
        # the sampling grid maps output to input coordinates: theta = (R · [[s, h], [0, s]]) and shift
        theta = torch.stack(
            [
                torch.stack([cos * scale, cos * shear - sin * scale, shift[:, 0]], dim=-1),
                torch.stack([sin * scale, sin * shear + cos * scale, shift[:, 1]], dim=-1),
            ],
            dim=-2,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class EpisodicSampler(EpisodeSampler):
    """N-way K-shot Q-query episode batches from one split of a dataset.

    For each of the B tasks of a batch: N classes of the split are drawn at random and given the
    labels 0..N-1 in the order drawn (so a label says nothing about a class's place in the
    dataset); from each class K + Q distinct items are drawn, K for the support set and Q for
    the query set; then the support set and the query set are each shuffled, so that a label
    is not given by an item's position either.

    Args:
        dataset: where the classes and items come from.
        split: ``"train"``, ``"val"`` or ``"test"``.
        n_way: N, classes per task.
        k_shot: K, support items per class.
        q_query: Q, query items per class.
        batch_size: B, tasks per batch.
        seed: the stream's seed; batch ``i`` depends only on ``(seed, i)``.
        num_batches: how many batches one pass yields; ``None`` yields batches forever.
        augment: ``False`` (default), ``True`` for :class:`AffineAugment`'s defaults, or a mapping
            of its fields, e.g. ``{"rotate": 15.0}``: random affine distortions of every support
            and query image, drawn from the batch's generator. Only for image items
            ``[C, H, W]``; meant for training.
        num_workers: DataLoader worker processes that compute batches ahead (0: in this
            process); the stream is the same for any number.

    Raises:
        ValueError: the split is unknown or overlaps another split, it has fewer than N
            classes, a class has fewer than K + Q items, a size is not positive, or augmentation
            is asked for items that are not images.

    Example:
        >>> sampler = fewcore.create("sampler", "episodic", dataset=ds, split="train",
        ...                          n_way=5, k_shot=1, q_query=15, batch_size=4, seed=0)
        >>> episode = next(iter(sampler))
        >>> episode.support_x.shape, episode.query_y.shape
        (torch.Size([4, 5, 1, 28, 28]), torch.Size([4, 75]))
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        split: str,
        n_way: int,
        k_shot: int,
        q_query: int,
        batch_size: int = 1,
        seed: int = 0,
        num_batches: int | None = None,
        augment: bool | Mapping[str, float] = False,
        num_workers: int = 0,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
        for name, value, least in (
            ("n_way", n_way, 1),
            ("k_shot", k_shot, 1),
            ("q_query", q_query, 1),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
        if num_batches is not None and num_batches < 0:
            raise ValueError(f"num_batches must be None (endless) or >= 0; got {num_batches}")
        classes = list(dataset.classes(split))
        _check_disjoint(dataset, split, classes)
        if len(classes) < n_way:
            raise ValueError(
                f"split {split!r} has {len(classes)} classes, fewer than the {n_way} a {n_way}-way task needs"
            )
        needed = k_shot + q_query
        for name in classes:
            have = dataset.items(name).shape[0]
            if have < needed:
                raise ValueError(
                    f"class {name!r} of split {split!r} has {have} items, fewer than the {needed} "
                    f"needed for {k_shot}-shot {q_query}-query episodes (k_shot + q_query)"
                )
        if augment is True:
            self.augment: AffineAugment | None = AffineAugment()
        elif augment is False:
            self.augment = None
        else:
            known = {f.name for f in fields(AffineAugment)}
            unknown = set(augment) - known
            if unknown:
                raise ValueError(f"unknown augment options {sorted(unknown)}; expected some of {sorted(known)}")
            self.augment = AffineAugment(**dict(augment))
        if self.augment is not None and len(dataset.item_shape) != 3:
            raise ValueError(
                f"augment needs image items [C, H, W]; this dataset's items have shape {dataset.item_shape}"
            )
        self.dataset = dataset
        self.split = split
        self.classes = classes
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.batch_size = batch_size
        self.seed = seed
        self.num_batches = num_batches
        self.num_workers = num_workers
        self._next = 0

    def episode(self, index: int) -> Episode:
        """Batch ``index`` of the stream, computed from ``(seed, index)`` alone."""
        gen = generator(self.seed, index)
        n, k, q = self.n_way, self.k_shot, self.q_query
        support, query = [], []
        for _ in range(self.batch_size):
            chosen = torch.randperm(len(self.classes), generator=gen)[:n].tolist()
            task_s, task_q = [], []
            for c in chosen:
                items = self.dataset.items(self.classes[c])
                picked = items[torch.randperm(items.shape[0], generator=gen)[: k + q]]
                task_s.append(picked[:k])
                task_q.append(picked[k:])
            support.append(torch.cat(task_s))
            query.append(torch.cat(task_q))
        support_x, query_x = torch.stack(support), torch.stack(query)
        # labels are the draw order of the classes; shuffling each set removes positional order too
        support_y = torch.arange(n).repeat_interleave(k).expand(self.batch_size, -1)
        query_y = torch.arange(n).repeat_interleave(q).expand(self.batch_size, -1)
        support_order = torch.rand(self.batch_size, n * k, generator=gen).argsort(dim=1)
        query_order = torch.rand(self.batch_size, n * q, generator=gen).argsort(dim=1)
        support_x = _gather_rows(support_x, support_order)
        query_x = _gather_rows(query_x, query_order)
        support_y = support_y.gather(1, support_order)
        query_y = query_y.gather(1, query_order)
        if self.augment is not None:
            shape = support_x.shape
            support_x = self.augment(support_x.flatten(0, 1), gen).view(shape)
            shape = query_x.shape
            query_x = self.augment(query_x.flatten(0, 1), gen).view(shape)
        return Episode(support_x, support_y, query_x, query_y, n_way=n, k_shot=k)

    def __iter__(self) -> Iterator[Episode]:
        """Batches from the current position on; the position advances as each is yielded."""
        start = self._next
        if self.num_workers == 0:
            stream: Iterator[Episode] = (self.episode(i) for i in self._indices(start))
        else:
            loader = DataLoader(_Stream(self, start), batch_size=None, num_workers=self.num_workers)
            stream = iter(loader)
        for index, episode in zip(self._indices(start), stream):
            self._next = index + 1
            yield episode
        if self.num_batches is not None:
            self._next = 0  # a finite pass is over: the next pass starts again from batch 0

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless sampler (num_batches=None) has no length")
        return self.num_batches

    def state_dict(self) -> dict[str, Any]:
        """``{"next": i, "seed": seed}``: the index of the next batch and the stream's seed."""
        return {"next": self._next, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the seed must match this sampler's."""
        if state.get("seed") != self.seed:
            raise ValueError(
                f"sampler state was saved with seed {state.get('seed')!r} but this sampler has seed {self.seed}"
            )
        position = int(state["next"])
        if position < 0 or (self.num_batches is not None and position > self.num_batches):
            raise ValueError(f"sampler position {position} is outside 0..{self.num_batches}")
        self._next = position

    def _indices(self, start: int) -> Iterator[int]:
        return iter(range(start, self.num_batches)) if self.num_batches is not None else count(start)


class _Stream(IterableDataset):
    """A sampler's batches from ``start`` on, shared round-robin among DataLoader workers.

    Worker ``w`` of ``W`` computes batches ``start + w, start + w + W, ...``; a DataLoader
    (``in_order=True``, its default) takes one from each worker in turn, so the batches arrive in
    index order.
    """

    def __init__(self, sampler: EpisodicSampler, start: int) -> None:
        self.sampler = sampler
        self.start = start

    def __iter__(self) -> Iterator[Episode]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        first, stop = self.start + worker, self.sampler.num_batches
        indices = count(first, workers) if stop is None else range(first, stop, workers)
        for index in indices:
            yield self.sampler.episode(index)


def _gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """``x[b, order[b]]`` for every b: ``[B, M, ...]`` reordered along dim 1 by ``[B, M]``."""
    return x[torch.arange(x.shape[0])[:, None], order]


def _check_disjoint(dataset: FewShotDataset, split: str, classes: list[str]) -> None:
    """Refuse a split that shares classes with another: evaluation must be on unseen classes."""
    mine = set(classes)
    for other in _SPLITS:
        if other == split:
            continue
        shared = mine.intersection(dataset.classes(other))
        if shared:
            examples = ", ".join(repr(c) for c in sorted(shared)[:3])
            raise ValueError(
                f"splits {split!r} and {other!r} share {len(shared)} classes (e.g. {examples}); "
                "train/val/test classes must be disjoint"
            )


@hookimpl
def fewcore_register_samplers(register: Register) -> None:
    register("episodic", EpisodicSampler)
