"""Tiny components registered by hand, so the engine is tested independently of the built-ins.

The dataset is Gaussian clusters in 8 dimensions (a nearest-prototype learner separates them
after a few steps); the sampler is seeded per batch index, so its state is that index.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pytest
import torch
from torch import Tensor, nn

import fewcore
from fewcore import Backbone, Component, Episode, EpisodeSampler, FewShotDataset, Learner, LearnerOutput, Registry
from fewcore._plugins import PluginInfo

FEATURES = 8
INFORMATIVE = 3


class Clusters(FewShotDataset):
    """``classes`` Gaussian clusters per split, ``items`` items each, ``[FEATURES]`` vectors."""

    def __init__(self, classes: int = 10, items: int = 12, noise: float = 0.5, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        # Classes differ in the first INFORMATIVE features; the rest is loud noise that a
        # trained embedding learns to ignore (so training measurably helps).
        informative = (torch.arange(FEATURES) < INFORMATIVE).float()
        self._items = {}
        self._splits: dict[str, list[str]] = {}
        for split in ("train", "val", "test"):
            names = [f"{split}{c}" for c in range(classes)]
            self._splits[split] = names
            for name in names:
                center = torch.randn(FEATURES, generator=gen) * 2 * informative
                spread = noise * (informative + 4 * (1 - informative))
                self._items[name] = center + spread * torch.randn(items, FEATURES, generator=gen)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (FEATURES,)

    def classes(self, split: str) -> list[str]:
        return list(self._splits[split])

    def items(self, class_name: str) -> Tensor:
        return self._items[class_name]


class IndexSampler(EpisodeSampler):
    """Batch ``i`` is drawn from a generator seeded with ``(seed, i)``; the state is ``i``."""

    def __init__(
        self, dataset: FewShotDataset, split: str, n_way: int, k_shot: int, q_query: int, batch_size: int, seed: int
    ) -> None:
        self.dataset, self.split = dataset, split
        self.n_way, self.k_shot, self.q_query, self.batch_size, self.seed = n_way, k_shot, q_query, batch_size, seed
        self.index = 0
        if n_way > len(dataset.classes(split)):
            raise ValueError(f"{n_way}-way episodes need {n_way} classes; split {split!r} has {len(dataset.classes(split))}")
        for name in dataset.classes(split):
            if len(dataset.items(name)) < k_shot + q_query:
                raise ValueError(f"class {name!r} has {len(dataset.items(name))} items; {k_shot + q_query} are needed")

    def _task(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        names = self.dataset.classes(self.split)
        chosen = torch.randperm(len(names), generator=gen)[: self.n_way]
        labels = torch.randperm(self.n_way, generator=gen)
        sx, sy, qx, qy = [], [], [], []
        for label, c in zip(labels.tolist(), chosen.tolist()):
            items = self.dataset.items(names[c])
            order = torch.randperm(len(items), generator=gen)
            sx.append(items[order[: self.k_shot]])
            qx.append(items[order[self.k_shot : self.k_shot + self.q_query]])
            sy += [label] * self.k_shot
            qy += [label] * self.q_query
        return torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy)

    def __iter__(self) -> Iterator[Episode]:
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
            self.index += 1
            tasks = [self._task(gen) for _ in range(self.batch_size)]
            sx, sy, qx, qy = (torch.stack(parts) for parts in zip(*tasks))
            yield Episode(sx, sy, qx, qy, self.n_way, self.k_shot)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state["index"]


class Linear(Backbone):
    """One linear map with dropout (dropout exercises the global RNG, which a resume must restore)."""

    def __init__(
        self, in_features: int = FEATURES, out_features: int = 16, dropout: float = 0.1, item_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.in_features = in_features
        # item_shape (the engine passes the dataset's) is left to the engine's embedding_size check.
        self.layer = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Linear takes items of shape ({self.in_features},), got {tuple(input_shape)}")
        return self.layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer(x))


class NearestMean(Learner):
    """Prototypical-network-style learner: logits = -squared distance to class means."""

    def __init__(self, backbone: Backbone, item_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        b = support_x.shape[0]
        s = self.backbone(support_x.flatten(0, 1)).unflatten(0, (b, -1))
        q = self.backbone(query_x.flatten(0, 1)).unflatten(0, (b, -1))
        n_way = int(support_y.max()) + 1
        one_hot = nn.functional.one_hot(support_y, n_way).float()
        means = one_hot.transpose(1, 2) @ s / one_hot.sum(1)[..., None]
        return -torch.cdist(q, means) ** 2

    def forward(self, episode: Episode) -> LearnerOutput:
        logits = self.predict(episode.support_x, episode.support_y, episode.query_x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        return LearnerOutput(logits, loss)


def fake_registry() -> Registry:
    """A registry with only the fakes: dataset ``clusters``, sampler ``episodic``, backbone
    ``linear``, learner ``nearest``."""
    info = PluginInfo("engine-test-fakes", "<tests>", "")
    registry = Registry()
    for kind, name, factory in (
        ("dataset", "clusters", Clusters),
        ("sampler", "episodic", IndexSampler),
        ("backbone", "linear", Linear),
        ("learner", "nearest", NearestMean),
    ):
        registry.add(Component(kind, name, factory, info))
    return registry


def fake_config_dict(run_dir: str, **train: Any) -> dict[str, Any]:
    """A TOML-shaped config of a tiny run over the fakes."""
    return {
        "dataset": {"name": "clusters"},
        "backbone": {"name": "linear"},
        "learner": {"name": "nearest"},
        "train": {"steps": 12, "n_way": 3, "k_shot": 2, "q_query": 3, "log_every": 2, "checkpoint_every": 4, **train},
        "val": {"every": 4, "episodes": 10, "setting": "3-way 1-shot", "q_query": 3},
        "eval": {"episodes": 30, "settings": ["3-way 1-shot", "3-way 3-shot"], "q_query": 3},
        "run": {"dir": run_dir},
    }


@pytest.fixture
def fakes() -> Iterator[Registry]:
    """Make ``fewcore.create`` see only the fake components for the duration of a test."""
    registry = fake_registry()
    with fewcore.use_registry(registry):
        yield registry
