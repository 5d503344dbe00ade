"""Reptile: the inner optimizers, the meta-update handed to the engine's optimizer, loop vs vmap, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import fewcore
from fewcore import Episode
from fewcore.plugins.learners.reptile import ADAM_BETAS, ADAM_EPS, Reptile
from fewcore.testing import random_episode
from tests.plugins._backbones import Flat
from tests.plugins._learning import glyph_accuracy_before_and_after

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _f64(episode: Episode) -> Episode:
    return dataclasses.replace(episode, support_x=episode.support_x.to(F64), query_x=episode.query_x.to(F64))


def _linear_sgd(theta: Tensor, x: Tensor, y: Tensor, steps: int, lr: float) -> Tensor:
    """SGD on the mean cross-entropy of softmax(x θ[:, :-1]ᵀ + θ[:, -1]); ∇ = (p − onehot)ᵀ [x 1] / n."""
    inputs = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    for _ in range(steps):
        probabilities = torch.softmax(inputs @ theta.T, dim=1)
        theta = theta - lr * (probabilities - F.one_hot(y, theta.shape[0]).to(x.dtype)).T @ inputs / len(x)
    return theta


@pytest.mark.parametrize("steps", [1, 4])
def test_meta_gradient_is_theta_minus_the_mean_adapted_weights(steps: int) -> None:
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=3, batch_size=3, seed=1))
    torch.manual_seed(0)
    learner = Reptile(Flat(4), n_way=3, inner_steps=steps, inner_lr=0.5, inner_optimizer="sgd").to(F64)
    head = learner.model.head
    theta = torch.cat([head.weight, head.bias[:, None]], dim=1).detach()
    adapted = [_linear_sgd(theta, episode.support_x[b], episode.support_y[b], steps, 0.5) for b in range(3)]
    query_loss = torch.stack([
        F.cross_entropy(episode.query_x[b] @ a[:, :4].T + a[:, 4], episode.query_y[b]) for b, a in enumerate(adapted)
    ]).mean()

    output = learner(episode)
    output.loss.backward()
    torch.testing.assert_close(output.loss, query_loss, rtol=1e-12, atol=1e-12)  # the value the engine logs
    expected = theta - torch.stack(adapted).mean(0)
    torch.testing.assert_close(head.weight.grad, expected[:, :4], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(head.bias.grad, expected[:, 4], rtol=1e-12, atol=1e-14)


def test_plain_sgd_on_the_loss_is_the_reptile_update() -> None:
    """θ ← θ + ε (mean_i θ_i' − θ), with ε the meta-optimizer's learning rate."""
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=1, batch_size=2, seed=2))
    torch.manual_seed(0)
    learner = Reptile(Flat(4), n_way=3, inner_steps=3, inner_lr=0.5, inner_optimizer="sgd").to(F64)
    theta = {name: p.detach().clone() for name, p in learner.named_parameters()}
    adapted, _ = learner.adapt(episode.support_x, episode.support_y, episode.query_x, 3)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.25)
    learner(episode).loss.backward()
    optimizer.step()
    for name, p in learner.model.named_parameters():
        expected = theta[f"model.{name}"] + 0.25 * (adapted[name].mean(0) - theta[f"model.{name}"])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_inner_adam_is_torch_adam_with_the_papers_betas() -> None:
    episode = _f64(random_episode((4,), n_way=3, k_shot=2, q_query=1, batch_size=2, seed=3))
    torch.manual_seed(0)
    learner = Reptile(Flat(4), n_way=3, inner_steps=4, inner_lr=0.05, inner_optimizer="adam").to(F64)
    adapted, _ = learner.adapt(episode.support_x, episode.support_y, episode.query_x, 3)
    for task in range(2):
        head = torch.nn.Linear(4, 3).to(F64)
        head.load_state_dict(learner.model.head.state_dict())
        optimizer = torch.optim.Adam(head.parameters(), lr=0.05, betas=ADAM_BETAS, eps=ADAM_EPS)
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(head(episode.support_x[task]), episode.support_y[task]).backward()
            optimizer.step()
        torch.testing.assert_close(adapted["head.weight"][task], head.weight.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(adapted["head.bias"][task], head.bias.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_vmapped_and_looped_tasks_agree_on_conv4(inner_optimizer: str) -> None:
    episode = _f64(random_episode((1, 16, 16), n_way=3, k_shot=2, q_query=2, batch_size=3, seed=4))
    results = []
    for task_batching, chunk in (("loop", None), ("vmap", None), ("vmap", 2)):
        torch.manual_seed(0)
        backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
        learner = Reptile(
            backbone, n_way=3, inner_steps=2, inner_lr=0.1, inner_optimizer=inner_optimizer,
            task_batching=task_batching, tasks_per_vmap=chunk, item_shape=(1, 16, 16),
        ).to(F64)
        output = learner(episode)
        output.loss.backward()
        results.append((output.logits, {name: p.grad for name, p in learner.named_parameters()}))
    (logits, grads), others = results[0], results[1:]
    # A convolution's bias before batch norm has a zero gradient up to rounding, which Adam's
    # g / sqrt(v) turns into ±α steps of arbitrary sign: not comparable between the two paths.
    cancelled = {f"model.backbone.features.{i}.bias" for i in (0, 4, 8, 12)} if inner_optimizer == "adam" else set()
    for other_logits, other_grads in others:
        torch.testing.assert_close(other_logits, logits, rtol=1e-10, atol=1e-12)
        for name in grads.keys() - cancelled:
            torch.testing.assert_close(other_grads[name], grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_running_statistics_untouched_and_evaluation_matches_predict() -> None:
    torch.manual_seed(0)
    backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
    learner = Reptile(backbone, n_way=3, inner_steps=1, eval_inner_steps=3, item_shape=(1, 16, 16))
    before = {name: b.clone() for name, b in learner.named_buffers()}
    episode = random_episode((1, 16, 16), n_way=3, k_shot=1, q_query=2, batch_size=2)
    learner(episode).loss.backward()
    for name, buffer in learner.named_buffers():
        assert torch.equal(buffer, before[name]), name
    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(learner(episode).logits, learner.predict(episode.support_x, episode.support_y, episode.query_x))


def test_inference_mode_and_too_many_ways_are_explained() -> None:
    learner = Reptile(Flat(4), n_way=3).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.no_grad"):
        learner(random_episode((4,), n_way=3, k_shot=1, q_query=1, batch_size=1))
    with pytest.raises(ValueError, match="n_way >= 4"):
        learner(random_episode((4,), n_way=4, k_shot=1, q_query=1, batch_size=1))


@pytest.mark.parametrize(
    ("config", "message"),
    [({"inner_steps": -1}, "inner_steps"), ({"eval_inner_steps": 2.5}, "eval_inner_steps"), ({"n_way": 0}, "n_way"),
     ({"inner_lr": 0.0}, "inner_lr"), ({"inner_optimizer": "rmsprop"}, "inner_optimizer"),
     ({"task_batching": "auto"}, "task_batching"), ({"tasks_per_vmap": 0}, "tasks_per_vmap")],
)
def test_bad_configuration_is_reported(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reptile(Flat(4), **config)


def test_registered() -> None:
    learner = fewcore.create("learner", "reptile", backbone=Flat(4), n_way=2, item_shape=(4,))
    assert isinstance(learner, Reptile) and learner.model.head.out_features == 2


def test_learns_one_shot_glyphs() -> None:
    # The paper's outer update (plain SGD, ε = 1) on a narrow Conv4
    before, after = glyph_accuracy_before_and_after(
        lambda backbone, shape: Reptile(
            backbone, n_way=5, inner_steps=5, inner_lr=0.1, inner_optimizer="sgd", eval_inner_steps=3, item_shape=shape
        ),
        steps=50,
        lr=1.0,
        optimizer="sgd",
        hidden_channels=8,
    )
    assert after > 0.6 and after > before + 0.15, f"glyphs 5-way 1-shot accuracy {before:.2f} → {after:.2f} (chance 0.20)"
