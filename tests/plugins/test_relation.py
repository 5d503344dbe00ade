"""Relation Networks: class feature maps, the split first convolution, the MSE loss, errors, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import Backbone, Episode
from fewcore.plugins.backbones import MLP
from fewcore.plugins.learners.relation import RelationModule, RelationNetworks
from fewcore.testing import random_episode
from tests.plugins._learning import glyph_accuracy_before_and_after

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


class TinyMaps(Backbone):
    """One 3×3 convolution and a tanh: ``[1, 4, 4]`` images → ``[3, 4, 4]`` feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        return (1, 4, 4)

    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (3, *input_shape[1:])

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.conv(x))

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return 3 * input_shape[1] * input_shape[2]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).flatten(1)


def _f64(episode: Episode) -> Episode:
    return dataclasses.replace(episode, support_x=episode.support_x.to(F64), query_x=episode.query_x.to(F64))


@pytest.mark.parametrize("feature_shape", [(3, 5, 5), (3, 2, 2), (3, 1, 1)])
def test_split_first_convolution_equals_scoring_each_concatenation(feature_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    module = RelationModule(feature_shape, channels=4, hidden=3).to(F64).eval()
    with torch.no_grad():  # non-trivial running statistics
        module.first_norm.running_mean.uniform_(-1, 1)
        module.first_norm.running_var.uniform_(0.5, 2)
    classes, queries = torch.randn(2, 3, *feature_shape, dtype=F64), torch.randn(2, 4, *feature_shape, dtype=F64)
    scores = module.score_all_pairs(classes, queries)
    expected = torch.stack([
        torch.stack([module(torch.cat([classes[b], queries[b, j].expand_as(classes[b])], dim=1)) for j in range(4)])
        for b in range(2)
    ])
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)
    assert ((scores > 0) & (scores < 1)).all()


@pytest.mark.parametrize("class_pooling", ["sum", "mean"])
def test_scores_relate_queries_to_pooled_class_maps_whatever_the_label_order(class_pooling: str) -> None:
    torch.manual_seed(0)
    learner = RelationNetworks(TinyMaps(), relation_channels=4, relation_hidden=3, class_pooling=class_pooling)
    learner = learner.to(F64).eval()
    episode = _f64(random_episode((1, 4, 4), n_way=3, k_shot=2, q_query=2, batch_size=2, seed=1))
    with torch.no_grad():
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        for b in range(2):
            maps = learner.backbone.forward_features(episode.support_x[b])
            # f(S_k) = Σ f(x_i) over the class's support items (or their mean)
            classes = torch.stack([getattr(maps[episode.support_y[b] == k], class_pooling)(0) for k in range(3)])
            for j, query in enumerate(learner.backbone.forward_features(episode.query_x[b])):
                expected = learner.relation(torch.cat([classes, query.expand_as(classes)], dim=1))
                torch.testing.assert_close(scores[b, j], expected, rtol=1e-12, atol=1e-12)


def test_loss_is_the_mean_squared_error_against_one_hot_labels() -> None:
    torch.manual_seed(0)
    learner = RelationNetworks(TinyMaps(), relation_channels=4, relation_hidden=3).to(F64)
    episode = _f64(random_episode((1, 4, 4), n_way=3, k_shot=1, q_query=2, batch_size=2, seed=2))
    output = learner(episode)
    expected = ((output.logits - F.one_hot(episode.query_y, 3).to(F64)) ** 2).mean()
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    assert learner.backbone.conv.weight.grad.abs().sum() > 0 and learner.relation.first.weight.grad.abs().sum() > 0


def test_a_backbone_without_feature_maps_is_explained() -> None:
    with pytest.raises(NotImplementedError, match="forward_features"):
        RelationNetworks(MLP(in_features=4))


class FlatMaps(TinyMaps):
    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (48,)


def test_feature_maps_that_are_not_c_h_w_and_bad_sizes_are_explained() -> None:
    with pytest.raises(ValueError, match=r"\[C, H, W\] feature maps; the backbone's feature maps have shape \(48,\)"):
        RelationNetworks(FlatMaps())
    with pytest.raises(ValueError, match="relation_channels"):
        RelationNetworks(TinyMaps(), relation_channels=0)
    with pytest.raises(ValueError, match="class_pooling must be 'sum' or 'mean'; got 'max'"):
        RelationNetworks(TinyMaps(), class_pooling="max")


def test_registered_and_sized_from_the_item_shape() -> None:
    backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
    learner = fewcore.create("learner", "relation", backbone=backbone, item_shape=(1, 84, 84))
    assert isinstance(learner, RelationNetworks)
    assert learner.relation.score[0].in_features == 64 * 1 * 1  # 5×5 maps pool to 2×2, then 1×1


def test_learns_one_shot_glyphs() -> None:
    before, after = glyph_accuracy_before_and_after(
        lambda backbone, shape: RelationNetworks(backbone, relation_channels=16, item_shape=shape), steps=60, lr=3e-3
    )
    assert after > 0.5 and after > before + 0.2, f"glyphs 5-way 1-shot accuracy {before:.2f} → {after:.2f} (chance 0.20)"
