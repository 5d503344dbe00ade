"""fewcore.episodes: the public episode helpers learner plugins build on."""

from __future__ import annotations

import pytest
import torch

import fewcore
from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks
from fewcore.testing import random_episode


def test_embed_tasks_gives_per_task_embeddings_or_feature_maps() -> None:
    backbone = fewcore.create("backbone", "conv4", hidden_channels=8, item_shape=(1, 32, 32)).eval()
    episode = random_episode((1, 32, 32), n_way=3, k_shot=2, q_query=1, batch_size=2, seed=0)
    support, query = embed_tasks(backbone, episode.support_x, episode.query_x)
    assert support.shape == (2, 6, 8 * 2 * 2) and query.shape == (2, 3, 8 * 2 * 2)
    support_maps, query_maps = embed_tasks(backbone, episode.support_x, episode.query_x, feature_maps=True)
    assert support_maps.shape == (2, 6, 8, 2, 2) and query_maps.shape == (2, 3, 8, 2, 2)
    # The flat embedding is the flattened feature map, item by item (eval mode: no batch coupling).
    torch.testing.assert_close(support_maps.flatten(2), support)
    with torch.no_grad():
        alone = backbone(episode.query_x[1, 2:3])
    torch.testing.assert_close(query[1, 2], alone[0])


def test_feature_maps_need_a_backbone_that_has_them() -> None:
    backbone = fewcore.create("backbone", "mlp", item_shape=(4,), out_features=3)
    episode = random_episode((4,), n_way=2, k_shot=1, q_query=1, batch_size=1)
    with pytest.raises(NotImplementedError, match="MLP gives only flat embeddings.*forward_features"):
        embed_tasks(backbone, episode.support_x, episode.query_x, feature_maps=True)


def test_resnet12_feature_maps_pool_to_its_embedding() -> None:
    backbone = fewcore.create("backbone", "resnet12", channels=(4, 4, 4, 6), item_shape=(3, 16, 16)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        maps = backbone.forward_features(x)
        assert maps.shape == (2, *backbone.feature_shape((3, 16, 16))) == (2, 6, 1, 1)
        torch.testing.assert_close(maps.mean(dim=(2, 3)), backbone(x))


def test_class_one_hot_and_checks() -> None:
    labels = torch.tensor([[2, 0, 1, 0]])
    one_hot = class_one_hot(labels, 3)
    assert one_hot.dtype == torch.float32 and one_hot.argmax(-1).tolist() == labels.tolist()
    episode = random_episode((2,), n_way=3, k_shot=2, q_query=1, batch_size=2)
    assert check_episode(episode) == 3
    assert check_task_batch(episode.support_x, episode.support_y, episode.query_x) == 3
    with pytest.raises(ValueError, match="class 2 has no support item in task 0"):
        check_task_batch(episode.support_x, episode.support_y.clamp(max=1), episode.query_x, n_way=3)
