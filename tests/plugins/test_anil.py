"""ANIL: MAML restricted to the head, exact meta-gradients through the features, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import Episode
from fewcore.plugins.learners.anil import ANIL
from fewcore.plugins.learners.maml import MAML
from fewcore.testing import random_episode
from tests.plugins._backbones import Flat
from tests.plugins._learning import glyph_accuracy_before_and_after

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


class CountingMLP(Flat):
    """A linear layer and a tanh, counting its calls."""

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.linear = nn.Linear(features, 5)
        self.calls = 0

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return 5

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return torch.tanh(self.linear(x.flatten(1)))


def _f64(episode: Episode) -> Episode:
    return dataclasses.replace(episode, support_x=episode.support_x.to(F64), query_x=episode.query_x.to(F64))


def _gradients(learner: nn.Module, episode: Episode) -> dict[str, Tensor]:
    learner.zero_grad(set_to_none=True)
    learner(episode).loss.backward()
    return {name: p.grad.clone() for name, p in learner.named_parameters()}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_on_a_parameter_free_body_anil_is_maml(first_order: bool, steps: int) -> None:
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=3, batch_size=3, seed=1))
    torch.manual_seed(0)
    anil = ANIL(Flat(4), n_way=3, inner_steps=steps, inner_lr=0.5, first_order=first_order).to(F64)
    maml = MAML(Flat(4), n_way=3, inner_steps=steps, inner_lr=0.5, first_order=first_order).to(F64)
    maml.model.head.load_state_dict(anil.head.state_dict())
    torch.testing.assert_close(anil(episode).logits, maml(episode).logits, rtol=1e-12, atol=1e-12)
    anil_grads, maml_grads = _gradients(anil, episode), _gradients(maml, episode)
    for name in ("weight", "bias"):
        torch.testing.assert_close(anil_grads[f"head.{name}"], maml_grads[f"model.head.{name}"], rtol=1e-12, atol=1e-14)


def _hand_meta_loss(learner: ANIL, episode: Episode, steps: int, lr: float) -> Tensor:
    """The ANIL meta-loss written out task by task with plain autograd (create_graph: second order)."""
    items = torch.cat([episode.support_x, episode.query_x], dim=1).flatten(0, 1)
    features = learner.backbone(items).view(episode.batch_size, -1, 5)
    n_support = episode.support_x.shape[1]
    losses = []
    for task in range(episode.batch_size):
        weight, bias = learner.head.weight, learner.head.bias
        for _ in range(steps):
            inner = F.cross_entropy(F.linear(features[task, :n_support], weight, bias), episode.support_y[task])
            grad_weight, grad_bias = torch.autograd.grad(inner, (weight, bias), create_graph=True)
            weight, bias = weight - lr * grad_weight, bias - lr * grad_bias
        logits = F.linear(features[task, n_support:], weight, bias)
        losses.append(F.cross_entropy(logits, episode.query_y[task]))
    return torch.stack(losses).mean()


def test_meta_gradient_reaches_the_body_through_support_and_query_features() -> None:
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=2, batch_size=2, seed=2))
    torch.manual_seed(0)
    learner = ANIL(CountingMLP(4), n_way=3, inner_steps=2, inner_lr=0.7).to(F64)
    expected = {}
    learner.zero_grad(set_to_none=True)
    _hand_meta_loss(learner, episode, steps=2, lr=0.7).backward()
    expected = {name: p.grad.clone() for name, p in learner.named_parameters()}
    learner.backbone.calls = 0
    got = _gradients(learner, episode)
    assert learner.backbone.calls == 1  # the features of all items, once per meta-batch
    for name, gradient in expected.items():
        torch.testing.assert_close(got[name], gradient, rtol=1e-10, atol=1e-12, msg=name)
    assert got["backbone.linear.weight"].abs().sum() > 0


def test_evaluation_adapts_under_no_grad_and_matches_predict() -> None:
    torch.manual_seed(3)
    learner = ANIL(Flat(4), n_way=3, inner_steps=1, eval_inner_steps=4).to(F64).eval()
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=2, batch_size=2, seed=3))
    with torch.no_grad():
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        torch.testing.assert_close(learner(episode).logits, scores)
        fit = learner.predict(episode.support_x, episode.support_y, episode.support_x)
        before = learner.head(episode.support_x)
    # four steps fit the support set better than the initialization does
    loss_after = F.cross_entropy(fit.flatten(0, 1), episode.support_y.flatten())
    loss_before = F.cross_entropy(before.flatten(0, 1), episode.support_y.flatten())
    assert loss_after < loss_before - 0.1


def test_inference_mode_and_too_many_ways_are_explained() -> None:
    learner = ANIL(Flat(4), n_way=3).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.no_grad"):
        learner(random_episode((4,), n_way=3, k_shot=1, q_query=1, batch_size=1))
    with pytest.raises(ValueError, match="n_way >= 4"):
        learner(random_episode((4,), n_way=4, k_shot=1, q_query=1, batch_size=1))
    assert learner(random_episode((4,), n_way=2, k_shot=1, q_query=2, batch_size=2)).logits.shape == (2, 4, 2)


@pytest.mark.parametrize(
    ("config", "message"),
    [({"inner_steps": -1}, "inner_steps"), ({"eval_inner_steps": 1.5}, "eval_inner_steps"),
     ({"n_way": 0}, "n_way"), ({"inner_lr": math.nan}, "inner_lr")],
)
def test_bad_configuration_is_reported(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ANIL(Flat(4), **config)


def test_registered() -> None:
    learner = fewcore.create("learner", "anil", backbone=Flat(4), n_way=2, item_shape=(4,))
    assert isinstance(learner, ANIL) and learner.head.out_features == 2


def test_learns_one_shot_glyphs() -> None:
    before, after = glyph_accuracy_before_and_after(
        lambda backbone, shape: ANIL(backbone, n_way=5, inner_steps=5, inner_lr=0.4, eval_inner_steps=10, item_shape=shape),
        steps=60,
        lr=3e-3,
    )
    assert after > 0.5 and after > before + 0.2, f"glyphs 5-way 1-shot accuracy {before:.2f} → {after:.2f} (chance 0.20)"
