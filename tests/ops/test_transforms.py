"""The ops under torch.func, torch.compile, autocast and double backward, and FEWCORE_OPS."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import fewcore.ops as ops
from fewcore.ops import reference

Op = Callable[..., torch.Tensor]


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    s = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 6, 2, generator=gen, dtype=torch.float64)
    return q, s, v


def _distance(module: object, metric: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda q, s, v: module.pairwise_distance(q, s, metric)  # type: ignore[attr-defined]


def _attention(module: object, metric: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda q, s, v: module.episode_attention(q, s, v, metric, 0.8)  # type: ignore[attr-defined]


CASES = [(make, metric) for make in (_distance, _attention) for metric in ops.METRICS]
IDS = [f"{make.__name__[1:]}-{metric}" for make, metric in CASES]


@pytest.mark.parametrize(("make", "metric"), CASES, ids=IDS)
def test_func_grad_grad_of_grad_and_vmap_of_grad(make: Callable, metric: str) -> None:
    """What MAML-style learners do: per-task gradients, and gradients of gradients."""
    q, s, v = _inputs(0)
    results = []
    for module in (ops, reference):
        f = make(module, metric)

        def loss(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
            return f(query, support, v[0]).sin().sum()  # noqa: B023 (used within this iteration only)

        grad = torch.func.grad(loss, argnums=(0, 1))(q[0], s[0])
        grad_of_grad = torch.func.grad(lambda a: sum(g.sum() for g in torch.func.grad(loss, (0, 1))(a, s[0])))(q[0])
        vmapped = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(q, s)
        results.append((grad, grad_of_grad, vmapped))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize(("make", "metric"), CASES, ids=IDS)
def test_double_backward_with_create_graph(make: Callable, metric: str) -> None:
    q, s, v = _inputs(1)
    results = []
    for module in (ops, reference):
        leaves = [t.clone().requires_grad_() for t in (q, s, v)]
        out = make(module, metric)(*leaves)
        first = torch.autograd.grad(out.square().sum(), leaves[:2], create_graph=True)
        second = torch.autograd.grad(
            sum(g.square().sum() for g in first), leaves, allow_unused=True, materialize_grads=True
        )
        results.append((first, second))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("make", [_distance, _attention], ids=["distance", "attention"])
def test_plain_eager_calls_record_the_cpp_autograd_function(make: Callable) -> None:
    """Outside torch.func and torch.compile the graph node is C++ (csrc/autograd.cpp), the fast path."""
    q, s, v = (t.requires_grad_() for t in _inputs(3))
    out = make(ops, "cosine")(q, s, v)
    assert "CppNode<fewcore::" in out.grad_fn.name()
    # create_graph runs the differentiable Python backward, so the gradient has a graph of its own.
    grad_q = torch.autograd.grad(out.sum(), q, create_graph=True)[0]
    assert grad_q.grad_fn is not None and "Backward" in grad_q.grad_fn.name()


def test_cpp_autograd_entry_points_run_below_autograd() -> None:
    """In inference mode the dispatcher skips autograd; the entry points then run the forward kernels."""
    from fewcore.ops import _compiled

    q, s, v = _inputs(4)
    with torch.inference_mode():
        distances = _compiled._ops._pairwise_distance_autograd(q, s, 0)
        attention, _, _ = _compiled._ops._episode_attention_autograd(q, s, v, 2, 0.8)
    torch.testing.assert_close(distances, reference.pairwise_distance(q, s, "sqeuclidean"))
    torch.testing.assert_close(attention, reference.episode_attention(q, s, v, "cosine", 0.8))


def test_compile_fullgraph() -> None:
    q, s, v = (t.float() for t in _inputs(2))

    def step(query: torch.Tensor, support: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        logits = -ops.pairwise_distance(query, support, "sqeuclidean")
        return logits.logsumexp(-1).sum() + ops.episode_attention(query, support, values, "cosine", 0.5).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, step):
        query = q.clone().requires_grad_()
        loss = fn(query, s, v)
        loss.backward()
        results.append((loss, query.grad))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("op", ["pairwise_distance", "episode_attention"])
def test_autocast_computes_in_float32(op: str) -> None:
    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(6, 4)
    inputs = torch.randn(2, 5, 6, generator=gen)
    support = torch.randn(2, 3, 6, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, s = layer(inputs), layer(support)
        assert q.dtype == torch.bfloat16
        args = (q, s) if op == "pairwise_distance" else (q, s, torch.eye(3).expand(2, 3, 3))
        out = getattr(ops, op)(*args)
    assert out.dtype == torch.float32
    expected = getattr(reference, op)(*(a.double() for a in args))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("op", ["pairwise_distance", "episode_attention"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["backward", "create_graph"])
def test_backward_inside_autocast_multiplies_in_float32(op: str, metric: str, create_graph: bool) -> None:
    """A backward run inside autocast (issue 15): the kernels' own products must not be lowered to
    bfloat16, whose 8-bit mantissa would leave errors of ~1e-2 in the gradients."""
    gen = torch.Generator().manual_seed(5)
    q64, s64, v64 = (torch.randn(2, rows, 6, generator=gen, dtype=torch.float64) for rows in (5, 4, 4))
    leaves = [t.float().requires_grad_() for t in (q64, s64, v64)]
    exact = [t.clone().requires_grad_() for t in (q64, s64, v64)]
    n_args = 2 if op == "pairwise_distance" else 3
    extra = () if op == "pairwise_distance" else (1.5,)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = getattr(ops, op)(*leaves[:n_args], metric, *extra)
        grads = torch.autograd.grad(out.square().sum(), leaves[:n_args], create_graph=create_graph)
        # The second derivative goes through the reference's vector-Jacobian product (_compiled.py).
        second = torch.autograd.grad(grads[0].square().sum(), leaves[0]) if create_graph else ()
    expected = getattr(reference, op)(*exact[:n_args], metric, *extra)
    expected_grads = torch.autograd.grad(expected.square().sum(), exact[:n_args], create_graph=create_graph)
    assert all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuple(g.double() for g in grads), expected_grads, rtol=1e-5, atol=1e-5)
    if create_graph:
        expected_second = torch.autograd.grad(expected_grads[0].square().sum(), exact[0])
        torch.testing.assert_close(second[0].double(), expected_second[0], rtol=1e-4, atol=1e-4)


def test_reference_mode_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    q, s, v = _inputs(4)
    monkeypatch.setenv("FEWCORE_OPS", "reference")
    assert torch.equal(ops.pairwise_distance(q, s, "cosine"), reference.pairwise_distance(q, s, "cosine"))
    assert torch.equal(ops.episode_attention(q, s, v), reference.episode_attention(q, s, v))
    monkeypatch.setenv("FEWCORE_OPS", "fast")
    with pytest.raises(ValueError, match="FEWCORE_OPS must be one of"):
        ops.pairwise_distance(q, s)
