"""fewcore.ops.pairwise_distance against the float64 pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fewcore.ops as ops
from fewcore.ops import (
    _compiled,  # noqa: F401  (registers the torch.ops.fewcore ops called directly below)
    reference,
)
from tests.ops._inputs import DEVICES, DTYPES, LAYOUTS, leaf, make, tolerances


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "single"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(metric: str, dtype: torch.dtype, batched: bool, layout: str, device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    lead = (3,) if batched else ()
    x, x64 = leaf(make((*lead, 7, 5), layout, dtype, gen, device))
    y, y64 = leaf(make((*lead, 4, 5), "contiguous" if layout == "expanded" else layout, dtype, gen, device))
    out = ops.pairwise_distance(x, y, metric)
    expected = reference.pairwise_distance(x64, y64, metric)
    assert out.dtype == dtype and out.shape == expected.shape == (*lead, 7, 4)
    torch.testing.assert_close(out.double(), expected, **tolerances(dtype))
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64).to(device)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tolerances(dtype))
    torch.testing.assert_close(y.grad.double(), y64.grad, **tolerances(dtype))


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("threads", [1, 2])
def test_many_tiles(metric: str, threads: int) -> None:
    """Shapes spanning several row and column tiles of the CPU kernel, single and multi-threaded."""
    gen = torch.Generator().manual_seed(1)
    x64 = torch.randn(2, 130, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y64 = torch.randn(2, 1030, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    x, y = (t.detach().float().requires_grad_() for t in (x64, y64))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.pairwise_distance(x, y, metric)
        out.sum().backward()
    finally:
        torch.set_num_threads(before)
    expected = reference.pairwise_distance(x64, y64, metric)
    expected.sum().backward()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(y.grad.double(), y64.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradcheck(metric: str) -> None:
    gen = torch.Generator().manual_seed(2)
    # Small: gradgradcheck differentiates through the reference once per input element.
    x = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.pairwise_distance(a, b, metric), (x, y))
    assert torch.autograd.gradgradcheck(lambda a, b: ops.pairwise_distance(a, b, metric), (x, y))


@pytest.mark.parametrize("metric", [0, 1, 2, 3])
def test_opcheck(metric: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, generator=gen)
    y = torch.randn(2, 5, 3, generator=gen)
    out = torch.ops.fewcore.pairwise_distance(x, y, metric)
    torch.library.opcheck(torch.ops.fewcore.pairwise_distance.default, (x, y, metric))
    torch.library.opcheck(
        torch.ops.fewcore._pairwise_distance_backward.default, (torch.randn_like(out), x, y, out, metric)
    )


@pytest.mark.parametrize("metric", [0, 1, 2, 3])
def test_raw_ops_accept_inputs_that_require_grad(metric: int) -> None:
    """Called directly with grad mode on, the kernels' own ATen calls must not try to record autograd."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, generator=gen, requires_grad=True)
    y = torch.randn(2, 5, 3, generator=gen, requires_grad=True)
    out = torch.ops.fewcore.pairwise_distance(x, y, metric)
    torch.testing.assert_close(out, torch.ops.fewcore.pairwise_distance(x.detach(), y.detach(), metric))
    grad = torch.randn_like(out)
    grads = torch.ops.fewcore._pairwise_distance_backward(grad, x, y, out, metric)
    expected = torch.ops.fewcore._pairwise_distance_backward(grad, x.detach(), y.detach(), out.detach(), metric)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_near_duplicates_stay_accurate() -> None:
    """‖x‖² + ‖y‖² − 2x·y cancels for close points far from the origin; the kernel must not."""
    gen = torch.Generator().manual_seed(4)
    x = 100 + torch.randn(2, 80, 64, generator=gen)
    y = x[:, :40] + 1e-3 * torch.randn(2, 40, 64, generator=gen)
    out = ops.pairwise_distance(x, y, "sqeuclidean")
    expected = reference.pairwise_distance(x.double(), y.double(), "sqeuclidean")
    # The nearest pairs are ~64e-6 apart (squared); float32 cancellation would leave ~1e-1 of noise.
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-9)
    euclid = ops.pairwise_distance(x, y, "euclidean")
    torch.testing.assert_close(euclid.double(), expected.sqrt(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
def test_near_duplicates_across_parallel_row_chunks(threads: int) -> None:
    """The exact recomputation in the forward's row-parallel epilogue, over more rows than one chunk.

    2·600 query rows against 300 support rows exceed one at::parallel_for chunk of the epilogue
    (cpu::grain_for), and near-duplicate pairs sit in every chunk.
    """
    gen = torch.Generator().manual_seed(5)
    x = 100 + torch.randn(2, 600, 16, generator=gen)
    y = x[:, ::2] + 1e-3 * torch.randn(2, 300, 16, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sq = ops.pairwise_distance(x, y, "sqeuclidean")
        euclid = ops.pairwise_distance(x, y, "euclidean")
    finally:
        torch.set_num_threads(before)
    expected = reference.pairwise_distance(x.double(), y.double(), "sqeuclidean")
    assert expected[:, ::2].diagonal(dim1=1, dim2=2).max() < 1e-4  # y_j is x_2j moved by ~1e-3
    torch.testing.assert_close(sq.double(), expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(euclid.double(), expected.sqrt(), rtol=1e-4, atol=1e-9)


def test_no_graph_without_grad() -> None:
    """Under no_grad (and for inputs not requiring grad) the kernel runs without an autograd node."""
    x, y = torch.randn(2, 7, 5, requires_grad=True), torch.randn(2, 4, 5)
    with torch.no_grad():
        out = ops.pairwise_distance(x, y, "euclidean")
    assert out.grad_fn is None and not out.requires_grad
    assert ops.pairwise_distance(x.detach(), y, "euclidean").grad_fn is None
    torch.testing.assert_close(out, ops.pairwise_distance(x, y, "euclidean").detach())


def test_identical_points_give_zero_and_finite_gradients() -> None:
    x = torch.randn(3, 6, requires_grad=True)
    for metric in ("sqeuclidean", "euclidean"):
        out = ops.pairwise_distance(x, x, metric)
        assert (out >= 0).all() and (out.diagonal() == 0).all()
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()
    # d‖x−y‖ at x = y is 0 (the subgradient), as in the reference.
    y = x.detach().clone().requires_grad_()
    gx, gy = torch.autograd.grad(ops.pairwise_distance(x[:1], y[:1], "euclidean").sum(), (x, y))
    assert (gx == 0).all() and (gy == 0).all()


def test_cosine_of_zero_vector_is_zero_with_finite_gradient() -> None:
    x = torch.zeros(2, 4)
    x[1] = torch.randn(4)
    x.requires_grad_()
    y = torch.randn(3, 4, requires_grad=True)
    out = ops.pairwise_distance(x, y, "cosine")
    assert (out[0] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    reference.pairwise_distance(x64, y64, "cosine").sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)


def test_nan_propagates_like_the_reference() -> None:
    x = torch.randn(2, 3, 4)
    x[0, 1, 2] = float("nan")
    y = torch.randn(2, 5, 4)
    for metric in ops.METRICS:
        out = ops.pairwise_distance(x, y, metric)
        expected = reference.pairwise_distance(x, y, metric)
        assert torch.equal(out.isnan(), expected.isnan()), metric
        assert out[0, 1].isnan().all() and not out[1].isnan().any()


def test_shared_2d_argument_and_empty_sets() -> None:
    x = torch.randn(3, 4, 5)
    y = torch.randn(6, 5)
    torch.testing.assert_close(ops.pairwise_distance(x, y), reference.pairwise_distance(x, y))
    assert ops.pairwise_distance(torch.randn(3, 0, 5), torch.randn(3, 6, 5)).shape == (3, 0, 6)
    assert ops.pairwise_distance(torch.randn(3, 4, 5), torch.randn(3, 0, 5)).shape == (3, 4, 0)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "match"),
    [
        (torch.randn(2, 3, 4), torch.randn(2, 3, 5), {}, ValueError, r"feature sizes .* \(x: 4, y: 5\)"),
        (torch.randn(2, 3, 4), torch.randn(3, 3, 4), {}, ValueError, r"batch sizes differ \(x: 2, y: 3\)"),
        (torch.randn(4), torch.randn(3, 4), {}, ValueError, r"x must be \[B, rows, features\].*got shape \(4,\)"),
        (torch.randn(1, 2, 3, 4), torch.randn(3, 4), {}, ValueError, r"x must be .*\(1, 2, 3, 4\)"),
        (torch.ones(3, 4, dtype=torch.int64), torch.randn(3, 4), {}, TypeError, "x must be float16.*got torch.int64"),
        (torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), {}, TypeError, "y has dtype torch.float64"),
        (torch.randn(3, 4), torch.randn(3, 4, device="meta"), {}, ValueError, "y is on meta but x is on cpu"),
        (torch.randn(3, 4), torch.randn(3, 4), {"metric": "manhattan"}, ValueError, "metric must be one of"),
        (torch.randn(3, 0), torch.randn(3, 0), {}, ValueError, "at least one feature"),
        ([[1.0]], torch.randn(3, 4), {}, TypeError, "x must be a torch.Tensor; got list"),
    ],
)
def test_bad_input_is_a_clear_error(x: object, y: object, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ops.pairwise_distance(x, y, **kwargs)  # type: ignore[arg-type]


def test_kernel_checks_its_arguments() -> None:
    """A direct torch.ops call gets a RuntimeError naming the problem, not a crash."""
    import fewcore.ops._compiled  # noqa: F401  (loads the kernels)

    with pytest.raises(RuntimeError, match="x has 4 features but y has 5"):
        torch.ops.fewcore.pairwise_distance(torch.randn(1, 2, 4), torch.randn(1, 2, 5), 0)
    with pytest.raises(RuntimeError, match="metric code must be"):
        torch.ops.fewcore.pairwise_distance(torch.randn(1, 2, 4), torch.randn(1, 2, 4), 7)
    with pytest.raises(RuntimeError, match="must be 3-D"):
        torch.ops.fewcore.pairwise_distance(torch.randn(2, 4), torch.randn(2, 4), 0)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    d=st.one_of(st.integers(1, 9), st.just(1200)),
    metric=st.sampled_from(ops.METRICS),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(b: int, n: int, m: int, d: int, metric: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(b, m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    out = ops.pairwise_distance(x, y, metric)
    expected = reference.pairwise_distance(x, y, metric)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (x, y))
    expected_grads = torch.autograd.grad(expected.sum(), (x, y))
    torch.testing.assert_close(grads, expected_grads)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize(("n", "d"), [(300, 1), (40, 64), (70, 3)])  # (70, 3) against 1100: the tiled backward
def test_near_duplicate_gradients_stay_accurate(metric: str, n: int, d: int) -> None:
    """Issue 16: the backward's expanded form Σ_j G_ij y_j + a_i x_i cancels for close points far
    from the origin (−203.9 against the exact −228 at D = 1, 300×300); the kernels take such
    pairs' terms from the differences, as the forward does."""
    gen = torch.Generator().manual_seed(6)
    m = 1100 if n == 70 else n
    x64 = 100 + 8e-3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    y64 = 100 + 8e-3 * torch.randn(m, d, generator=gen, dtype=torch.float64)
    x, y = (t.float().requires_grad_() for t in (x64, y64))
    exact = [t.float().double().requires_grad_() for t in (x64, y64)]
    ops.pairwise_distance(x, y, metric).sum().backward()
    reference.pairwise_distance(*exact, metric).sum().backward()
    for mine, theirs in zip((x, y), exact):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4 * theirs.grad.abs().max().item())


@pytest.mark.parametrize("scale", [1e19, 1e-19])
def test_cosine_of_huge_and_tiny_rows(scale: float) -> None:
    """float32 rows of magnitude 1e19 overflowed ‖x‖² and x·y to inf: cosine was NaN (issue 16).
    Rows are rescaled by powers of two; tiny rows, whose norm is below eps, keep the eps rule."""
    gen = torch.Generator().manual_seed(7)
    x64, y64 = (torch.randn(2, rows, 8, generator=gen, dtype=torch.float64) * scale for rows in (5, 6))
    x, y = (t.float().requires_grad_() for t in (x64, y64))
    exact = [t.float().double().requires_grad_() for t in (x64, y64)]
    out = ops.pairwise_distance(x, y, "cosine")
    expected = reference.pairwise_distance(*exact, "cosine")
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    out.backward(grad.float())
    expected.backward(grad)
    for mine, theirs in zip((x, y), exact):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5 * theirs.grad.abs().max().item())


def test_backward_refuses_arguments_on_another_device() -> None:
    """The backward ops check the device of grad and out (a CPU gradient handed to the CUDA kernel
    was read through a host pointer). On a machine without a GPU the check is reached with a
    tensor the CPU kernel receives from a direct call: a zero-size meta tensor dispatches by x."""
    x, y = torch.randn(1, 2, 3), torch.randn(1, 4, 3)
    out = ops.pairwise_distance(x, y)
    with pytest.raises(RuntimeError, match="grad is on meta but x is on cpu; pass every tensor on one device"):
        torch.ops.fewcore._pairwise_distance_backward.default.redispatch(
            torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), out.to("meta"), x, y, out, 0
        )


@pytest.mark.cuda
def test_cuda_backward_refuses_a_cpu_gradient() -> None:
    """A CPU grad handed to the CUDA backward would be read through a host pointer."""
    x, y = torch.randn(1, 2, 3, device="cuda"), torch.randn(1, 4, 3, device="cuda")
    out = torch.ops.fewcore.pairwise_distance(x, y, 0)
    with pytest.raises(RuntimeError, match="grad is on cpu but x is on cuda"):
        torch.ops.fewcore._pairwise_distance_backward(out.cpu(), x, y, out, 0)
