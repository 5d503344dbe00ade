"""fewcore.testing's checks pass correct components and catch each kind of broken one."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, EpisodeSampler, FewShotDataset, LearnerOutput
from fewcore.plugins.backbones import MLP
from fewcore.plugins.learners.protonet import PrototypicalNetworks
from fewcore.testing import ToyDataset, check_backbone, check_dataset, check_learner, check_sampler, random_episode

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytest_plugins = ["pytester"]

# --- backbones -------------------------------------------------------------------------------


class Linear(Backbone):
    """A correct backbone; the subclasses below break one thing each."""

    def __init__(self, in_features: int = 6, out_features: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.in_features = in_features

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return self.linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class WrongSize(Linear):
    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return 5


class UnusedParameter(Linear):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(3))


class NaNOutput(Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * float("nan")


class BatchDependentInEval(Linear):
    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out - out.mean(0)


class NotReproducible(Linear):
    built = 0

    def __init__(self) -> None:
        super().__init__()
        NotReproducible.built += 1
        self.offset = float(NotReproducible.built)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.offset


class NotABackbone(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def test_check_backbone_passes_correct_backbones() -> None:
    assert isinstance(check_backbone(Linear), Linear)
    check_backbone(MLP, input_shape=(2, 5), in_features=10, out_features=3)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (WrongSize, r"expected \[batch, embedding_size\] = \(4, 5\)"),
        (UnusedParameter, "parameter 'unused' got no gradient"),
        (NaNOutput, "non-finite"),
        (BatchDependentInEval, "depends on the rest of its batch"),
        (NotReproducible, "the same seed gave different outputs"),
        (NotABackbone, "not a fewcore.Backbone subclass"),
    ],
)
def test_check_backbone_catches(factory: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_backbone(factory)


def test_a_backbone_without_example_input_shape_is_told_to_declare_one() -> None:
    class Undeclared(Backbone):
        def forward(self, x: Tensor) -> Tensor:
            return x

        def embedding_size(self, input_shape: tuple[int, ...]) -> int:
            return input_shape[0]

    with pytest.raises(NotImplementedError, match="Undeclared does not declare example_input_shape"):
        check_backbone(Undeclared)


# --- learners --------------------------------------------------------------------------------


class DetachedBackbone(PrototypicalNetworks):
    """Trains only its own bias: the loss never reaches the backbone."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, episode: Episode) -> LearnerOutput:
        logits = super().forward(episode).logits.detach() + self.bias
        return LearnerOutput(logits, F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten()))


class TransposedLogits(PrototypicalNetworks):
    def forward(self, episode: Episode) -> LearnerOutput:
        output = super().forward(episode)
        return LearnerOutput(output.logits.transpose(0, 1), output.loss)


class PredictDisagrees(PrototypicalNetworks):
    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return -super().predict(support_x, support_y, query_x)


class ScalarLossMissing(PrototypicalNetworks):
    def forward(self, episode: Episode) -> LearnerOutput:
        output = super().forward(episode)
        return LearnerOutput(output.logits, output.loss.expand(2))


def test_check_learner_passes_a_correct_learner() -> None:
    assert isinstance(check_learner(PrototypicalNetworks, Linear), PrototypicalNetworks)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (DetachedBackbone, "got no gradient"),
        (TransposedLogits, r"expected \[B, N\*Q, N\] = \(2, 6, 3\)"),
        (PredictDisagrees, "predict and forward rank the classes differently"),
        (ScalarLossMissing, "the loss must be a scalar"),
    ],
)
def test_check_learner_catches(factory: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_learner(factory, Linear)


def test_random_episode_has_shuffled_balanced_labels() -> None:
    episode = random_episode((2, 3), n_way=4, k_shot=3, q_query=2, batch_size=5, seed=0)
    assert episode.support_x.shape == (5, 12, 2, 3) and episode.query_x.shape == (5, 8, 2, 3)
    for task in range(5):
        assert torch.bincount(episode.support_y[task]).tolist() == [3] * 4
        assert torch.bincount(episode.query_y[task]).tolist() == [2] * 4
    assert len({tuple(t.tolist()) for t in episode.support_y}) > 1
    torch.testing.assert_close(random_episode((2, 3), 4, 3, 2, 5, seed=0).query_x, episode.query_x)


# --- samplers --------------------------------------------------------------------------------


class Sampler(EpisodeSampler):
    """A small correct sampler (episode i is a function of (seed, i)); flags break one thing each."""

    def __init__(
        self,
        dataset: FewShotDataset,
        split: str,
        n_way: int,
        k_shot: int,
        q_query: int,
        batch_size: int,
        seed: int,
        positional: bool = False,
        ignores_seed: bool = False,
        forgets_position: bool = False,
        mixes_splits: bool = False,
    ) -> None:
        self.dataset, self.n_way, self.k_shot, self.q_query, self.batch_size = dataset, n_way, k_shot, q_query, batch_size
        self.classes = dataset.classes(split) + (dataset.classes("test") if mixes_splits else [])
        if n_way > len(self.classes):
            raise ValueError(f"{n_way}-way episodes need {n_way} classes; split {split!r} has {len(self.classes)}")
        self.seed = 0 if ignores_seed else seed
        self.positional = positional
        self.forgets_position = forgets_position
        self.position = 0

    def _task(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        chosen = torch.randperm(len(self.classes), generator=generator)[: self.n_way]
        support, query = [], []
        for label, index in enumerate(chosen.tolist()):
            items = self.dataset.items(self.classes[index])
            picked = items[torch.randperm(len(items), generator=generator)[: self.k_shot + self.q_query]]
            support += [(item, label) for item in picked[: self.k_shot]]
            query += [(item, label) for item in picked[self.k_shot :]]
        if not self.positional:
            support = [support[i] for i in torch.randperm(len(support), generator=generator)]
        return (
            torch.stack([x for x, _ in support]), torch.tensor([y for _, y in support]),
            torch.stack([x for x, _ in query]), torch.tensor([y for _, y in query]),
        )

    def __iter__(self) -> Iterator[Episode]:
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            tasks = [self._task(generator) for _ in range(self.batch_size)]
            self.position += 1
            yield Episode(*(torch.stack(part) for part in zip(*tasks)), n_way=self.n_way, k_shot=self.k_shot)

    def state_dict(self) -> dict[str, Any]:
        return {"position": 0 if self.forgets_position else self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


def test_check_sampler_passes_a_correct_sampler() -> None:
    assert isinstance(check_sampler(Sampler), Sampler)
    check_sampler(Sampler, ToyDataset(classes_per_split=5, items_per_class=4, item_shape=(3,)), n_way=5, k_shot=1, q_query=3)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("positional", "never by position"),
        ("ignores_seed", "seeds 0 and 1 gave the same episodes"),
        ("forgets_position", "resuming from state_dict"),
        ("mixes_splits", "classes outside the split"),
    ],
)
def test_check_sampler_catches(flag: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_sampler(Sampler, **{flag: True})


def test_toy_dataset_items_tell_their_class() -> None:
    dataset = ToyDataset(classes_per_split=2, items_per_class=3, item_shape=(1, 2, 2))
    assert dataset.classes("val") == ["class002", "class003"]
    items = torch.stack([dataset.items(name) for name in dataset.classes("test")])  # [2, 3, 1, 2, 2]
    assert dataset.class_of(items).tolist() == [[4, 4, 4], [5, 5, 5]]
    assert len({float(x) for x in itertools.chain.from_iterable(items.flatten(2)[..., 0].tolist())}) == 6


# --- datasets --------------------------------------------------------------------------------


class OverlappingSplits(ToyDataset):
    def classes(self, split: str) -> list[str]:
        return super().classes("train") if split == "val" else super().classes(split)


class IntegerItems(ToyDataset):
    def items(self, class_name: str) -> Tensor:
        return super().items(class_name).long()


class WrongItemShape(ToyDataset):
    def items(self, class_name: str) -> Tensor:
        return super().items(class_name).flatten(1)


class AnySplit(ToyDataset):
    def classes(self, split: str) -> list[str]:
        return super().classes(split) if split in self.SPLITS else []


class Unstable(ToyDataset):
    built = 0

    def __init__(self) -> None:
        super().__init__()
        Unstable.built += 1
        self.shift = Unstable.built

    def classes(self, split: str) -> list[str]:
        names = super().classes(split)
        return names[self.shift % 2 :] + names[: self.shift % 2]


def test_check_dataset_passes_correct_datasets(toy_dataset: ToyDataset) -> None:
    assert check_dataset(toy_dataset) is toy_dataset
    assert isinstance(check_dataset(ToyDataset, classes_per_split=2, item_shape=(3,)), ToyDataset)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (OverlappingSplits, r"classes \['class000', 'class001', 'class002'\] are in both the 'train' and the 'val' split"),
        (IntegerItems, "must be a float32 tensor; got torch.int64"),
        (WrongItemShape, r"has shape \(8, 16\); expected \[n >= 1, \*item_shape\]"),
        (AnySplit, "must raise ValueError for an unknown split"),
        (Unstable, "the same config gave other 'train' classes on a second build"),
    ],
)
def test_check_dataset_catches(factory: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_dataset(factory)


# --- the pytest plugin -----------------------------------------------------------------------


def test_the_fixtures_reach_a_test_suite_through_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import fewcore
        from fewcore import Component, PluginInfo
        from fewcore.testing import ToyDataset, check_dataset

        def test_registry(fewcore_registry):
            assert "conv4" in fewcore_registry.names("backbone")
            fewcore_registry.add(Component("dataset", "mine", ToyDataset, PluginInfo("t", "t-dist", "1")))
            assert isinstance(fewcore.create("dataset", "mine"), ToyDataset)

        def test_mine_is_gone():
            assert "mine" not in fewcore.list_components("dataset")

        def test_toy_data(toy_dataset):
            check_dataset(toy_dataset)
        """
    )
    pytester.runpytest("-p", "fewcore.testing", "-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_fewcore_testing_is_declared_as_a_pytest_plugin() -> None:
    # The entry point pytest finds it by; it has the module's name, so `-p fewcore.testing` (in
    # pyproject's addopts) and the entry point load it once between them.
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"fewcore.testing": "fewcore.testing"}
