"""MAML, first-order MAML and Meta-SGD: exact meta-gradients, finite differences, vmap vs loop, learning."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import Backbone, Episode
from fewcore.plugins.learners.maml import MAML, MetaSGD, adapt
from tests.plugins._backbones import Flat

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


F64 = torch.float64


class TinyConv(Backbone):
    """conv 3×3 → batch norm → ReLU → max-pool on 6×6 images: E = 2·3·3."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2))

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        return (1, 6, 6)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return 2 * (input_shape[1] // 2) * (input_shape[2] // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


def random_episode(
    batch: int, n_way: int, k_shot: int, q_query: int, item_shape: tuple[int, ...], seed: int = 0, dtype=F64
) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.randperm(n_way, generator=gen).repeat(k_shot) for _ in range(batch)])
    query_y = torch.stack([torch.randperm(n_way, generator=gen).repeat(q_query) for _ in range(batch)])
    return Episode(
        support_x=torch.randn(batch, n_way * k_shot, *item_shape, generator=gen, dtype=dtype),
        support_y=support_y,
        query_x=torch.randn(batch, n_way * q_query, *item_shape, generator=gen, dtype=dtype),
        query_y=query_y,
        n_way=n_way,
        k_shot=k_shot,
    )


def meta_gradients(learner: MAML, episode: Episode) -> list[Tensor]:
    learner.zero_grad()
    learner(episode).loss.backward()
    return [p.grad.clone() for p in learner.parameters()]


# --- exact values on a quadratic -------------------------------------------------------------
# Support loss L_s(θ) = θ² (so ∇L_s = 2θ), query loss L_q(θ) = θ²/2, θ = 1, α = 0.1:
# θ^(t+1) = θ^(t) − 0.2 θ^(t) = 0.8 θ^(t), so θ' = 0.8^s. The meta-gradient is
#   second order: dL_q(θ')/dθ = θ' · dθ'/dθ = 0.8^s · 0.8^s = 0.64^s
#   first order:  dθ'/dθ := 1, so 0.8^s
# and with one step, dL_q/dα = θ' · dθ'/dα = 0.8 · (−2θ) = −1.6 in either order.


@pytest.mark.parametrize(
    ("steps", "first_order", "expected"),
    [(1, False, 0.64), (3, False, 0.262144), (1, True, 0.8), (3, True, 0.512)],
)
def test_adapt_meta_gradient_exact_on_a_quadratic(steps: int, first_order: bool, expected: float) -> None:
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    adapted = adapt(lambda p: p["w"] ** 2, {"w": theta}, {"w": 0.1}, steps, first_order)
    assert adapted["w"].item() == pytest.approx(0.8**steps, abs=1e-15)
    (0.5 * adapted["w"] ** 2).backward()
    assert theta.grad.item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_learned_step_size_gradient_exact(first_order: bool) -> None:
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    alpha = torch.tensor(0.1, dtype=F64, requires_grad=True)
    adapted = adapt(lambda p: p["w"] ** 2, {"w": theta}, {"w": alpha}, 1, first_order)
    (0.5 * adapted["w"] ** 2).backward()
    assert alpha.grad.item() == pytest.approx(-1.6, abs=1e-15)
    assert theta.grad.item() == pytest.approx(0.8 if first_order else 0.64, abs=1e-15)


# --- closed form through the learner: a linear softmax classifier ----------------------------
# With Θ = [W | b] ∈ R^{N×(D+1)} and x̃ = [x; 1], logits z = Θ x̃ and for a set of n items
#   ∇_Θ L = (1/n) Σ_i (p_i − e_{y_i}) x̃_iᵀ,
#   H[V] = (1/n) Σ_i (diag(p_i) − p_i p_iᵀ) V x̃_i x̃_iᵀ       (Hessian of L applied to V),
# so the backward of one inner step Θ⁺ = Θ − A ∘ ∇L(Θ) maps the upstream gradient G to
#   ∂/∂Θ: G − H[A ∘ G]   (second order) or G (first order),     ∂/∂A: −∇L(Θ) ∘ G.


def _augmented(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def _ce_gradient(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    xa = _augmented(x)
    p = torch.softmax(xa @ theta.T, dim=1)
    return (p - F.one_hot(y, theta.shape[0]).to(x.dtype)).T @ xa / x.shape[0]


def _ce_hessian_times(theta: Tensor, x: Tensor, v: Tensor) -> Tensor:
    xa = _augmented(x)
    p = torch.softmax(xa @ theta.T, dim=1)  # [n, N]
    u = xa @ v.T  # [n, N]: V x̃_i
    hu = p * u - p * (p * u).sum(dim=1, keepdim=True)  # (diag(p_i) − p_i p_iᵀ) V x̃_i
    return hu.T @ xa / x.shape[0]


def _hand_meta_gradient(
    theta: Tensor, lr: Tensor, episode: Episode, steps: int, first_order: bool
) -> tuple[Tensor, Tensor]:
    """Meta-gradients (∂/∂Θ, ∂/∂A) of the mean query loss, from the formulas above."""
    total_theta, total_lr = torch.zeros_like(theta), torch.zeros_like(theta)
    for b in range(episode.batch_size):
        sx, sy = episode.support_x[b], episode.support_y[b]
        thetas = [theta]
        for _ in range(steps):
            thetas.append(thetas[-1] - lr * _ce_gradient(thetas[-1], sx, sy))
        g = _ce_gradient(thetas[-1], episode.query_x[b], episode.query_y[b])
        for t in reversed(range(steps)):
            total_lr -= _ce_gradient(thetas[t], sx, sy) * g
            if not first_order:
                g = g - _ce_hessian_times(thetas[t], sx, lr * g)
        total_theta += g
    return total_theta / episode.batch_size, total_lr / episode.batch_size


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("learner_cls", [MAML, MetaSGD])
def test_meta_gradient_matches_closed_form(learner_cls: type[MAML], first_order: bool, steps: int) -> None:
    torch.manual_seed(0)
    n_way, features = 3, 4
    learner = learner_cls(Flat(features), n_way=n_way, inner_steps=steps, inner_lr=0.5, first_order=first_order).to(F64)
    if isinstance(learner, MetaSGD):  # distinct step sizes per entry, to test the ∘
        with torch.no_grad():
            for lr in learner.inner_lr_params:
                lr.uniform_(0.2, 0.8)
    episode = random_episode(batch=2, n_way=n_way, k_shot=2, q_query=3, item_shape=(features,))
    meta_gradients(learner, episode)

    head = learner.model.head
    theta = torch.cat([head.weight, head.bias[:, None]], dim=1).detach()
    if isinstance(learner, MetaSGD):
        lr_w, lr_b = learner.inner_lr_params
        lr = torch.cat([lr_w, lr_b[:, None]], dim=1).detach()
    else:
        lr = torch.full_like(theta, 0.5)
    expected_theta, expected_lr = _hand_meta_gradient(theta, lr, episode, steps, first_order)

    torch.testing.assert_close(head.weight.grad, expected_theta[:, :features], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(head.bias.grad, expected_theta[:, features], rtol=1e-12, atol=1e-14)
    if isinstance(learner, MetaSGD):
        torch.testing.assert_close(lr_w.grad, expected_lr[:, :features], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(lr_b.grad, expected_lr[:, features], rtol=1e-12, atol=1e-14)


# --- finite differences on a tiny conv net with batch norm -----------------------------------


@pytest.mark.parametrize("learner_cls", [MAML, MetaSGD])
@pytest.mark.parametrize("task_batching", ["vmap", "loop"])
def test_second_order_meta_gradient_matches_finite_differences(learner_cls: type[MAML], task_batching: str) -> None:
    torch.manual_seed(1)
    learner = learner_cls(TinyConv(), n_way=3, inner_steps=2, inner_lr=0.3, task_batching=task_batching).to(F64)
    episode = random_episode(batch=2, n_way=3, k_shot=1, q_query=2, item_shape=(1, 6, 6), seed=1)
    analytic = meta_gradients(learner, episode)

    # Central differences of the exact meta-objective along random directions v of the whole
    # parameter space: (L(θ + εv) − L(θ − εv)) / 2ε ≈ ⟨∇L, v⟩, with every parameter involved.
    params = [p.detach() for p in learner.parameters()]  # views: writes reach the parameters
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(4):
        direction = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
        losses = []
        for sign in (1, -1):
            for p, v in zip(params, direction):
                p.add_(sign * eps * v)
            losses.append(learner(episode).loss.item())
            for p, v in zip(params, direction):
                p.sub_(sign * eps * v)
        numeric = (losses[0] - losses[1]) / (2 * eps)
        exact = sum(float((g * v).sum()) for g, v in zip(analytic, direction))
        assert exact == pytest.approx(numeric, rel=1e-6, abs=1e-9)

@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("learner_cls", [MAML, MetaSGD])
def test_vmapped_and_looped_meta_gradients_agree_on_conv4(learner_cls: type[MAML], first_order: bool) -> None:
    torch.manual_seed(2)
    backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
    learner = learner_cls(backbone, n_way=5, inner_steps=2, first_order=first_order, item_shape=(1, 16, 16)).to(F64)
    episode = random_episode(batch=3, n_way=5, k_shot=1, q_query=1, item_shape=(1, 16, 16), seed=2)
    learner.task_batching = "vmap"
    vmapped = meta_gradients(learner, episode)
    vmapped_logits = learner(episode).logits
    learner.tasks_per_vmap = 2  # chunks of 2 and 1 tasks
    chunked = meta_gradients(learner, episode)
    chunked_logits = learner(episode).logits
    learner.task_batching = "loop"
    looped = meta_gradients(learner, episode)
    torch.testing.assert_close(learner(episode).logits, vmapped_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked_logits, vmapped_logits, rtol=1e-10, atol=1e-12)
    for v, c, lp in zip(vmapped, chunked, looped):
        torch.testing.assert_close(v, lp, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(c, lp, rtol=1e-9, atol=1e-12)


def test_cpu_default_is_the_loop_and_vmap_there_takes_a_few_tasks_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the loop with the fused batch norm is the fastest path, so ``"auto"`` loops; an
    explicit vmap chunks the meta-batch (its whole-batch form is slower than chunks there)."""
    from fewcore.plugins.learners import maml

    chunk_sizes = []

    def recording_vmap(*args: Any, chunk_size: int | None = None, **kwargs: Any) -> Any:
        chunk_sizes.append(chunk_size)
        return torch.func.vmap(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(maml, "vmap", recording_vmap)
    episode = random_episode(batch=6, n_way=3, k_shot=1, q_query=1, item_shape=(4,))
    learner = MAML(Flat(4), n_way=3).to(F64)
    learner(episode)
    assert chunk_sizes == [] and learner.task_batching == "auto"
    learner.task_batching = "vmap"
    learner(episode)
    learner.tasks_per_vmap = 6
    learner(episode)
    assert chunk_sizes == [maml.CPU_TASKS_PER_VMAP, 6]


def test_running_statistics_untouched() -> None:
    backbone = fewcore.create("backbone", "conv4", hidden_channels=4)
    learner = MAML(backbone, n_way=5)
    before = {name: b.clone() for name, b in learner.model.named_buffers()}
    learner(random_episode(2, 5, 1, 1, (1, 28, 28), dtype=torch.float32)).loss.backward()
    for name, buffer in learner.model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_first_order_warmup_then_second_order() -> None:
    """The first ``first_order_warmup`` meta-training steps are FOMAML's, the later ones MAML's;
    evaluation and gradient-free passes do not count, and the count survives a state_dict round trip."""
    episode = random_episode(batch=2, n_way=3, k_shot=2, q_query=3, item_shape=(4,))

    def learner(**config: Any) -> MAML:
        torch.manual_seed(0)
        return MAML(Flat(4), n_way=3, inner_steps=2, inner_lr=0.5, **config).to(F64)

    first, second = meta_gradients(learner(first_order=True), episode), meta_gradients(learner(), episode)
    assert not torch.allclose(first[0], second[0])  # the schedule is observable
    warm = learner(first_order_warmup=2)
    warm.eval()
    with torch.no_grad():
        warm(episode)
    warm.train()
    with torch.no_grad():
        warm(episode)
    assert int(warm.meta_training_steps) == 0
    for expected in (first, first, second):
        for got, want in zip(meta_gradients(warm, episode), expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    resumed = learner(first_order_warmup=2)
    resumed.load_state_dict(warm.state_dict())
    assert int(resumed.meta_training_steps) == 3
    for got, want in zip(meta_gradients(resumed, episode), second):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


class ItemCallingBackbone(Flat):
    """Data-dependent Python control flow, which vmap cannot batch."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) * (2.0 if x.sum().item() > 0 else 1.0)


def test_auto_falls_back_to_the_loop_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewcore.plugins.learners import maml

    monkeypatch.setattr(maml, "auto_vmaps", lambda device: True)  # as on an accelerator
    episode = random_episode(batch=2, n_way=2, k_shot=1, q_query=2, item_shape=(3,))
    learner = MAML(ItemCallingBackbone(3), n_way=2).to(F64)
    with pytest.warns(RuntimeWarning, match="adapting one task at a time"):
        fallback = learner(episode).logits
    assert learner.task_batching == "loop"
    learner.task_batching = "vmap"
    with pytest.raises(RuntimeError):
        learner(episode)
    learner.task_batching = "loop"
    torch.testing.assert_close(learner(episode).logits, fallback)


def test_evaluation_adapts_under_no_grad_and_matches_predict() -> None:
    torch.manual_seed(3)
    learner = MAML(Flat(4), n_way=3, inner_steps=1, eval_inner_steps=4).to(F64).eval()
    episode = random_episode(batch=2, n_way=3, k_shot=2, q_query=2, item_shape=(4,))
    with torch.no_grad():
        out = learner(episode)
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
    torch.testing.assert_close(out.logits, scores)
    with torch.no_grad():
        unadapted = learner.model(episode.query_x.flatten(0, 1)).view_as(scores)
    assert not torch.allclose(scores, unadapted)  # the 4 inner steps moved the classifier
    # the support set itself is fit better after adaptation
    with torch.no_grad():
        fit = learner.predict(episode.support_x, episode.support_y, episode.support_x)
        before = learner.model(episode.support_x.flatten(0, 1)).view_as(fit)
    loss_after = F.cross_entropy(fit.flatten(0, 1), episode.support_y.flatten())
    loss_before = F.cross_entropy(before.flatten(0, 1), episode.support_y.flatten())
    assert loss_after < loss_before


def test_inference_mode_is_explained() -> None:
    learner = MAML(Flat(4), n_way=3).to(F64).eval()
    episode = random_episode(batch=1, n_way=3, k_shot=1, q_query=1, item_shape=(4,))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.no_grad"):
        learner(episode)


def test_episode_with_fewer_classes_uses_the_first_outputs_and_more_is_an_error() -> None:
    learner = MAML(Flat(4), n_way=5).to(F64)
    out = learner(random_episode(2, 3, 1, 2, (4,)))
    assert out.logits.shape == (2, 6, 3)
    with pytest.raises(ValueError, match="n_way >= 7"):
        learner(random_episode(2, 7, 1, 1, (4,)))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"inner_steps": -1}, "inner_steps"),
        ({"first_order_warmup": -2}, "first_order_warmup"),
        ({"eval_inner_steps": 1.5}, "eval_inner_steps"),
        ({"task_batching": "threads"}, "task_batching"),
        ({"tasks_per_vmap": 0}, "tasks_per_vmap"),
        ({"n_way": 0}, "n_way"),
    ],
)
def test_bad_configuration_is_reported(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MAML(Flat(4), **config)


def test_registered() -> None:
    learners = fewcore.list_components("learner")
    assert "maml" in learners and "metasgd" in learners
    learner = fewcore.create("learner", "metasgd", backbone=Flat(4), n_way=2, first_order=True)
    assert isinstance(learner, MetaSGD) and learner.first_order


@pytest.mark.parametrize(
    ("name", "precision", "channels_last"),
    [("maml", "fp32", False), ("metasgd", "fp32", False), ("maml", "bf16", True)],
)
def test_learns_one_shot_glyphs(name: str, precision: str, channels_last: bool) -> None:
    """Also under bfloat16 autocast and channels-last, the engine's defaults on CPUs with native
    bfloat16 (elsewhere bfloat16 is slower but computes the same)."""
    from fewcore.engine._precision import ComputeMode

    mode = ComputeMode.resolve(precision, channels_last, "cpu")
    if "episodic" not in fewcore.list_components("sampler"):
        pytest.skip("the episodic sampler is not registered")
    torch.manual_seed(0)
    # 16×16 glyphs (the smallest Conv4 takes) keep this a few seconds
    dataset = fewcore.create("dataset", "glyphs", alphabets=20, characters=10, drawings=10, image_size=16)

    def episodes(split: str, seed: int) -> Any:
        return fewcore.create(
            "sampler", "episodic", dataset=dataset, split=split, n_way=5, k_shot=1, q_query=5, batch_size=2, seed=seed
        )

    backbone = fewcore.create("backbone", "conv4", hidden_channels=16)
    learner = fewcore.create(
        "learner", name, backbone=backbone, item_shape=dataset.item_shape, eval_inner_steps=3, inner_lr=0.4
    )
    mode.prepare(learner)
    test = list(itertools.islice(episodes("test", 1), 5))

    def accuracy() -> float:
        learner.eval()
        with torch.no_grad():
            with mode.autocast():
                hits = [(learner(e).logits.argmax(-1) == e.query_y).float().mean() for e in test]
        learner.train()
        return float(torch.stack(hits).mean())

    before = accuracy()
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for episode in itertools.islice(episodes("train", 0), 30):
        optimizer.zero_grad()
        with mode.autocast():
            loss = learner(episode).loss
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after > 0.45 and after > before + 0.1, f"glyphs 5-way 1-shot accuracy {before:.2f} → {after:.2f} (chance 0.20)"


# --- against higher 0.2.1, the peer library (optional: pip install -e '.[peers]') --------------


def _higher_meta_gradients(net: nn.Module, episode: Episode, steps: int, first_order: bool, inner_lr: float) -> list[Tensor]:
    """The meta-gradient of the mean query loss as a higher user computes it (its MAML example)."""
    higher = pytest.importorskip("higher")
    net.zero_grad()
    inner_opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
    for sx, sy, qx, qy in zip(episode.support_x, episode.support_y, episode.query_x, episode.query_y):
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order) as (
            fnet,
            diffopt,
        ):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fnet(sx), sy))
            query_loss = F.cross_entropy(fnet(qx), qy) / episode.batch_size
            if first_order:  # detached adapted weights: higher leaves net's gradients empty
                for p, g in zip(net.parameters(), torch.autograd.grad(query_loss, list(fnet.parameters()))):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                query_loss.backward()
    return [p.grad for p in net.parameters()]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("first_order", "steps"), [(False, 1), (True, 1), (False, 5), (True, 5)])
def test_meta_gradients_equal_highers(first_order: bool, steps: int, channels_last: bool) -> None:
    """Conv4 on 28×28 images, float64: fewcore's default path (the loop with the fused batch
    norm on the CPU), channels-first and channels-last, against higher's, to 1e-10."""
    torch.manual_seed(4)
    backbone = fewcore.create("backbone", "conv4", hidden_channels=8)
    learner = MAML(backbone, n_way=5, inner_steps=steps, first_order=first_order, item_shape=(1, 28, 28)).to(F64)
    papers_order = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]  # as a higher user writes Conv4
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [kind(*args) for kind, args in zip(papers_order, [(1 if not layers else 8, 8, 3, 1, 1), (8,), (), (2,)])]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8, 5)).to(F64)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
    with torch.no_grad():
        for theirs, ours in zip(net.parameters(), learner.parameters(), strict=True):
            theirs.copy_(ours)
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    episode = random_episode(batch=2, n_way=5, k_shot=1, q_query=3, item_shape=(1, 28, 28), seed=4)

    expected = torch.cat([g.flatten() for g in _higher_meta_gradients(net, episode, steps, first_order, learner.inner_lr)])
    got = torch.cat([g.flatten() for g in meta_gradients(learner, episode)])
    assert float((got - expected).norm() / expected.norm()) <= 1e-10
