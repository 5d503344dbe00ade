"""fewcore.ops.episode_attention against the float64 pure-PyTorch reference."""

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
    other = "contiguous" if layout == "expanded" else layout
    q, q64 = leaf(make((*lead, 7, 5), layout, dtype, gen, device))
    s, s64 = leaf(make((*lead, 4, 5), other, dtype, gen, device))
    v, v64 = leaf(make((*lead, 4, 3), other, dtype, gen, device))
    # Distances between unit-variance 5-D points reach ~20: a temperature keeps the softmax soft.
    temperature = 4.0 if metric in ("sqeuclidean", "dot") else 0.5
    out = ops.episode_attention(q, s, v, metric, temperature)
    expected = reference.episode_attention(q64, s64, v64, metric, temperature)
    assert out.dtype == dtype and out.shape == expected.shape == (*lead, 7, 3)
    torch.testing.assert_close(out.double(), expected, **tolerances(dtype))
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64).to(device)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    for mine, theirs in ((q, q64), (s, s64), (v, v64)):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, **tolerances(dtype))


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize(("batch", "threads"), [(1, 2), (3, 2), (1, 1)])
def test_many_tiles(metric: str, batch: int, threads: int) -> None:
    """Several query and support tiles: the streaming softmax and both backward schedules
    (whole tasks per thread, and split passes when there are fewer tasks than threads)."""
    gen = torch.Generator().manual_seed(1)
    q64 = torch.randn(batch, 130, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    s64 = torch.randn(batch, 1100, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v64 = torch.randn(batch, 1100, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    q, s, v = (t.detach().float().requires_grad_() for t in (q64, s64, v64))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.episode_attention(q, s, v, metric, 2.0)
        out.sum().backward()
    finally:
        torch.set_num_threads(before)
    expected = reference.episode_attention(q64, s64, v64, metric, 2.0)
    expected.sum().backward()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    for mine, theirs in ((q, q64), (s, s64), (v, v64)):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize(
    ("batch", "queries", "support"),
    [
        (2, 64, 1024),  # N·M = 2^16: the largest tasks computed whole (batched products)
        (17, 64, 1024),  # ... in two chunks of tasks (at most 2^20 scores each)
        (2, 65, 1024),  # just above: streamed tile by tile
        (40, 75, 25),  # an episode meta-batch
    ],
)
def test_whole_task_and_streaming_paths(metric: str, batch: int, queries: int, support: int) -> None:
    """Both CPU schedules, on either side of the size that selects them, forward and backward."""
    gen = torch.Generator().manual_seed(4)
    q64 = torch.randn(batch, queries, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    s64 = torch.randn(batch, support, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v64 = torch.randn(batch, support, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    q, s, v = (t.detach().float().requires_grad_() for t in (q64, s64, v64))
    grad = torch.randn(batch, queries, 2, generator=gen, dtype=torch.float64)
    out = ops.episode_attention(q, s, v, metric, 2.0)
    out.backward(grad.float())
    expected = reference.episode_attention(q64, s64, v64, metric, 2.0)
    expected.backward(grad)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    for mine, theirs in ((q, q64), (s, s64), (v, v64)):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradcheck(metric: str) -> None:
    gen = torch.Generator().manual_seed(2)
    # Small: gradgradcheck differentiates through the reference once per input element.
    q = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def attention(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return ops.episode_attention(a, b, c, metric, 0.7)

    assert torch.autograd.gradcheck(attention, (q, s, v))
    assert torch.autograd.gradgradcheck(attention, (q, s, v))


@pytest.mark.parametrize("metric", [0, 1, 2, 3])
def test_opcheck(metric: int) -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 3, generator=gen)
    s = torch.randn(2, 5, 3, generator=gen)
    v = torch.randn(2, 5, 2, generator=gen)
    for save_values in (False, True):
        out, lse, values = torch.ops.fewcore.episode_attention(q, s, v, metric, 0.5, save_values)
        torch.library.opcheck(torch.ops.fewcore.episode_attention.default, (q, s, v, metric, 0.5, save_values))
        torch.library.opcheck(
            torch.ops.fewcore._episode_attention_backward.default,
            (torch.randn_like(out), q, s, v, out, lse, values, metric, 0.5),
        )


@pytest.mark.parametrize("metric", [0, 1, 2, 3])
def test_saved_values_are_the_metric_and_give_the_same_gradients(metric: int) -> None:
    """The forward's saved values (CPU, small tasks) spare the backward their recomputation."""
    gen = torch.Generator().manual_seed(4)
    q, s, v = (torch.randn(3, rows, width, generator=gen, dtype=torch.float64) for rows, width in ((6, 4), (5, 4), (5, 2)))
    out, lse, values = torch.ops.fewcore.episode_attention(q, s, v, metric, 0.5, True)
    torch.testing.assert_close(values, reference.pairwise_distance(q, s, ops.METRICS[metric]))
    _, _, empty = torch.ops.fewcore.episode_attention(q, s, v, metric, 0.5, False)
    assert empty.shape == (3, 0, 0)
    grad = torch.randn_like(out)
    saved = torch.ops.fewcore._episode_attention_backward(grad, q, s, v, out, lse, values, metric, 0.5)
    recomputed = torch.ops.fewcore._episode_attention_backward(grad, q, s, v, out, lse, empty, metric, 0.5)
    for a, b in zip(saved, recomputed):
        torch.testing.assert_close(a, b)


def test_saved_values_of_the_wrong_shape_are_refused() -> None:
    q, s, v = torch.randn(2, 4, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    out, lse, values = torch.ops.fewcore.episode_attention(q, s, v, 2, 1.0, True)
    with pytest.raises(RuntimeError, match=r"values must be the forward's \[B, N, M\] = \[2, 4, 5\]"):
        torch.ops.fewcore._episode_attention_backward(torch.ones_like(out), q, s, v, out, lse, values[:, :3], 2, 1.0)


@pytest.mark.parametrize("queries", [4, 70])  # whole-task and streaming paths (N·M = 20 and 77,000)
def test_log_sum_exp_is_saved_in_float64(queries: int) -> None:
    """lse is float64 for float32 inputs: rounded to float32 at large scores, the backward's
    probabilities exp(score − lse) would not sum to 1 (math.h: log_sum_exp)."""
    support = 5 if queries == 4 else 1100
    q, s, v = torch.randn(2, queries, 3), torch.randn(2, support, 3), torch.randn(2, support, 2)
    _, lse, _ = torch.ops.fewcore.episode_attention(q, s, v, 3, 0.5)
    assert lse.dtype == torch.float64
    scores = (q @ s.transpose(1, 2)).double() / 0.5
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), rtol=1e-5, atol=1e-5)


def test_one_hot_values_give_class_probabilities() -> None:
    """The Matching Networks read-out: rows are distributions over the support labels."""
    labels = torch.tensor([[0, 1, 2, 0, 1, 2]])
    support = torch.randn(1, 6, 8)
    out = ops.episode_attention(torch.randn(1, 9, 8), support, torch.nn.functional.one_hot(labels, 3).float())
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 9))
    assert (out >= 0).all()


def test_large_scores_do_not_overflow() -> None:
    """The softmax is shifted by its running maximum: scores of ±1e4 stay finite."""
    q = torch.randn(2, 5, 4) * 100
    s = torch.randn(2, 7, 4) * 100
    v = torch.randn(2, 7, 3)
    out = ops.episode_attention(q, s, v, "dot", 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.episode_attention(q.double(), s.double(), v.double(), "dot").float())


def test_nan_propagates_like_the_reference() -> None:
    q, s, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    q[0, 1, 2] = float("nan")
    for metric in ops.METRICS:
        out = ops.episode_attention(q, s, v, metric)
        expected = reference.episode_attention(q, s, v, metric)
        assert torch.equal(out.isnan(), expected.isnan()), metric
        assert out[0, 1].isnan().all() and not out[1].isnan().any()


def test_shared_2d_arguments_and_empty_queries() -> None:
    q, s, v = torch.randn(3, 4, 5), torch.randn(6, 5), torch.randn(6, 2)
    torch.testing.assert_close(ops.episode_attention(q, s, v), reference.episode_attention(q, s, v))
    assert ops.episode_attention(torch.randn(3, 0, 5), torch.randn(3, 6, 5), torch.randn(3, 6, 2)).shape == (3, 0, 2)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.randn(2, 3, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 2)), {}, ValueError, r"\(q: 4, s: 6\)"),
        ((torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 2)), {}, ValueError, "got 5 and 6 rows"),
        ((torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(3, 5, 2)), {}, ValueError, r"\(q: 2, s: 2, v: 3\)"),
        ((torch.randn(3, 4), torch.randn(0, 4), torch.randn(0, 2)), {}, ValueError, r"support set is empty \(M = 0\)"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.ones(5, 2, dtype=torch.int32)), {}, TypeError, "v must be"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2, device="meta")), {}, ValueError, "v is on meta"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)), {"temperature": 0.0}, ValueError, "temperature"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)), {"temperature": float("nan")}, ValueError, "finite"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)), {"metric": "l1"}, ValueError, "metric must be"),
        ((torch.randn(5), torch.randn(5, 4), torch.randn(5, 2)), {}, ValueError, r"q must be .*got shape \(5,\)"),
    ],
)
def test_bad_input_is_a_clear_error(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ops.episode_attention(*args, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    d=st.one_of(st.integers(1, 9), st.just(1200)),
    c=st.integers(1, 5),
    metric=st.sampled_from(ops.METRICS),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(b: int, n: int, m: int, d: int, c: int, metric: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(b, m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, m, c, generator=gen, dtype=torch.float64, requires_grad=True)
    temperature = float(d) if metric in ("sqeuclidean", "dot") else 1.0
    out = ops.episode_attention(q, s, v, metric, temperature)
    expected = reference.episode_attention(q, s, v, metric, temperature)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (q, s, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, s, v))
    torch.testing.assert_close(grads, expected_grads)


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.06])
def test_one_support_item_gives_dv_equal_to_the_number_of_queries(temperature: float) -> None:
    """Issue 16: with M = 1 the output is v, so dL/dv of out.sum() is the number of queries. The
    backward's exp(score − lse) fused the score's product with the subtraction (an FMA the forward
    did not make) and gave 44.97 at T = 0.3 and 1.87e10 at T = 0.06 for |score| ≈ 1e9."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 100, generator=gen) * 500
    s = torch.randn(1, 1, 100, generator=gen) * 500
    v = torch.ones(1, 1, 2, requires_grad=True)
    ops.episode_attention(q, s, v, "sqeuclidean", temperature).sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 4.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("metric", ["sqeuclidean", "dot"])
@pytest.mark.parametrize(("queries", "support"), [(4, 7), (70, 1100)])  # whole-task and streaming paths
def test_backward_probabilities_sum_to_one_at_large_scores(metric: str, queries: int, support: int) -> None:
    """Σ_j dv_j = Σ_i dout_i whatever the scores. Scores of ≈ 1e6 that differ by a few units
    (queries and support in two distant clusters): with lse = max + log Σ rounded to float32 the
    backward's probabilities summed to 1 ± 3%."""
    gen = torch.Generator().manual_seed(1)
    direction = torch.nn.functional.normalize(torch.randn(1, 1, 4, generator=gen), dim=-1)
    q = 500 * direction + 0.01 * torch.randn(2, queries, 4, generator=gen)
    side = -1 if metric == "sqeuclidean" else 1  # distance ≈ 1000, or q·s ≈ 500²
    s = side * 500 * direction + 1e-3 * torch.randn(2, support, 4, generator=gen)
    v = torch.randn(2, support, 3, generator=gen, requires_grad=True)
    grad = torch.randn(2, queries, 3, generator=gen)
    temperature = 0.3
    scores = reference.similarity(q.double(), s.double(), metric) / temperature
    assert scores.abs().min() > 2e5
    spread = scores.max(-1).values - scores.min(-1).values
    assert spread.median() < 50  # the softmax is not one-hot: log Σ matters
    ops.episode_attention(q, s, v, metric, temperature).backward(grad)
    torch.testing.assert_close(v.grad.sum(1), grad.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("queries", [3, 70])  # whole-task path, and the streaming one (N·M > 65,536)
def test_masked_leading_support_rows(metric: str, queries: int) -> None:
    """Support rows at infinity score −inf. When a whole leading 512-row chunk of the streaming
    softmax was −inf, its shift exp(−inf − −inf) made the rows NaN (issue 16)."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, queries, 4, generator=gen, dtype=torch.float64)
    s = torch.randn(1, 1200, 4, generator=gen, dtype=torch.float64)
    s[:, :600, 0] = float("inf")
    v = torch.randn(1, 1200, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    v64 = v.detach().clone().requires_grad_()
    out = ops.episode_attention(q, s, v, metric, 1.0)
    expected = reference.episode_attention(q, s, v64, metric, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(v.grad, v64.grad)
    assert (v.grad[:, :600] == 0).all()


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize(("queries", "support"), [(40, 30), (70, 1100)])  # whole-task and streaming paths
def test_near_duplicate_gradients_stay_accurate(metric: str, queries: int, support: int) -> None:
    """Close points far from the origin: the gradient's expanded form Σ_j G_ij s_j + a_i q_i cancels
    (error eps·‖q‖/d); the kernels take such pairs' terms from the differences (math.h)."""
    gen = torch.Generator().manual_seed(3)
    q64 = 100 + torch.randn(2, queries, 8, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, queries, (support,), generator=gen)
    s64 = q64[:, rows] + 1e-2 * torch.randn(2, support, 8, generator=gen, dtype=torch.float64)
    v64 = torch.randn(2, support, 3, generator=gen, dtype=torch.float64)
    q, s, v = (t.float().requires_grad_() for t in (q64, s64, v64))
    exact = [t.float().double().requires_grad_() for t in (q64, s64, v64)]
    temperature = 0.01 if metric == "sqeuclidean" else 0.1
    out = ops.episode_attention(q, s, v, metric, temperature)
    expected = reference.episode_attention(*exact, metric, temperature)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    out.backward(grad.float())
    expected.backward(grad)
    for mine, theirs in zip((q, s, v), exact):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4 * theirs.grad.abs().max().item())


def test_cosine_of_huge_rows_is_finite() -> None:
    """float32 rows of magnitude 1e19 overflowed ‖x‖² and q·s to inf, and cosine became NaN."""
    gen = torch.Generator().manual_seed(4)
    q64, s64 = (torch.randn(2, rows, 8, generator=gen, dtype=torch.float64) * 1e19 for rows in (5, 6))
    v64 = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    q, s, v = (t.float().requires_grad_() for t in (q64, s64, v64))
    exact = [t.float().double().requires_grad_() for t in (q64, s64, v64)]
    out = ops.episode_attention(q, s, v, "cosine", 0.5)
    expected = reference.episode_attention(*exact, "cosine", 0.5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    for mine, theirs in zip((q, s, v), exact):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5 * theirs.grad.abs().max().item())


@pytest.mark.cuda
def test_cuda_backward_refuses_a_cpu_gradient() -> None:
    """A CPU grad_out handed to the CUDA backward would be read through a host pointer."""
    q, s, v = (torch.randn(1, rows, 3, device="cuda") for rows in (2, 4, 4))
    out, lse, values = torch.ops.fewcore.episode_attention(q, s, v, 0, 1.0)
    with pytest.raises(RuntimeError, match="grad_out is on cpu but q is on cuda"):
        torch.ops.fewcore._episode_attention_backward(out.cpu(), q, s, v, out, lse, values, 0, 1.0)
    with pytest.raises(RuntimeError, match="lse is on cpu but q is on cuda"):
        torch.ops.fewcore._episode_attention_backward(out, q, s, v, out, lse.cpu(), values, 0, 1.0)
