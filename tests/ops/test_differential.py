"""Differential test: the compiled ops against the float64 reference on random problems.

Each case draws a shape (B, N, M, D, C: 1, tile edges and odd sizes), a metric, a temperature, a
score magnitude up to ~1e6, an input layout (contiguous, transposed, sliced, expanded), and
sometimes near-duplicate points, a large common offset, huge rows for cosine, or a leading block
of masked (−inf score) support rows; it compares the forward and every input gradient with the
reference run in float64 on the same values. Errors are relative to the largest reference
magnitude, with a bound that grows with the problem's conditioning (the float32 rounding of a
score s moves exp(s) by eps·|s|).

Every CI run takes :data:`DEFAULT_CASES` cases per op (a few seconds). For a long run set
``FEWCORE_DIFF_CASES``, e.g. ``FEWCORE_DIFF_CASES=10000 python -m pytest tests/ops/test_differential.py``;
``FEWCORE_DIFF_SEED`` picks another stream of cases. A failure names the case and its seed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random

import pytest
import torch

import fewcore.ops as ops
from fewcore.ops import reference

DEFAULT_CASES = 150
CASES = int(os.environ.get("FEWCORE_DIFF_CASES", DEFAULT_CASES))
SEED = int(os.environ.get("FEWCORE_DIFF_SEED", 0))
#: sizes around the CPU kernels' tiles (64 query rows, 512 support rows) and the CUDA kernels'
#: (16-row tiles, 32-feature steps, 32-row chunks, 256-thread blocks), and small odd ones
ROWS = (1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65)
FEATURES = (1, 2, 3, 5, 8, 31, 32, 33, 64, 100, 257)
TEMPERATURES = (1.0, 0.3, 0.06, 7.0, 64.0)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
#: float64 cases reach |score| ≈ 1e6; float32 ones 1e4, where the rounding of the scores alone
#: already moves the probabilities by 1e-3
MAX_SCORE = {torch.float64: 1e6, torch.float32: 1e4}
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23}
#: at most this many B·N·M·D entries per case (the reference holds all the differences), which
#: keeps a case at a few milliseconds; wide rows are drawn with fewer of them
MAX_ENTRIES = 20_000


@dataclasses.dataclass(frozen=True)
class Case:
    """One random problem; ``seed`` regenerates its tensors."""

    index: int
    seed: int
    dtype: torch.dtype
    metric: str
    b: int
    n: int
    m: int
    d: int
    c: int
    temperature: float
    target_score: float
    layout: str
    kind: str  # "plain", "near-duplicates", "offset", "huge" (cosine rows ≳ 1e19) or "masked"

    def __str__(self) -> str:
        return (
            f"case {self.index} (seed {self.seed}): {str(self.dtype).removeprefix('torch.')} {self.metric} "
            f"B={self.b} N={self.n} M={self.m} D={self.d} C={self.c} T={self.temperature} "
            f"|score|~{self.target_score:.3g} {self.layout} {self.kind}"
        )


def draw_case(index: int) -> Case:
    """The index-th case of the stream chosen by :data:`SEED`."""
    seed = SEED * 1_000_003 + index
    rng = random.Random(seed)
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    metric = rng.choice(ops.METRICS)
    kind = rng.choices(["plain", "near-duplicates", "offset", "huge", "masked"], weights=[20, 8, 4, 2, 1])[0]
    if kind == "huge" and metric != "cosine":
        kind = "plain"
    if kind == "masked" and metric not in ("sqeuclidean", "euclidean"):
        kind = "plain"
    b, n, m = rng.choice((1, 1, 2, 3)), rng.choice(ROWS), rng.choice(ROWS)
    d = rng.choice([f for f in FEATURES if b * n * m * f <= MAX_ENTRIES] or [1])
    if kind == "masked":
        # N·M above 65,536 takes the CPU's streaming path, whose first 512-row chunk is all −inf;
        # N = 3 the whole-task path.
        b, n, m, d = 1, rng.choice((3, 70)), rng.choice((600, 1100)), rng.choice((1, 2))
    return Case(
        index=index, seed=seed, dtype=dtype, metric=metric, b=b, n=n, m=m, d=d,
        c=rng.choice((1, 2, 3, 5)), temperature=rng.choice(TEMPERATURES),
        target_score=10 ** rng.uniform(0, math.log10(MAX_SCORE[dtype])), layout=rng.choice(LAYOUTS), kind=kind,
    )


def _laid_out(t: torch.Tensor, layout: str, generator: torch.Generator) -> torch.Tensor:
    """``t``'s values in the given memory layout (``expanded``: one task repeated over B)."""
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        wide[..., 1::2] = torch.randn(t.shape, generator=generator, dtype=t.dtype)
        return wide[..., ::2]
    if layout == "expanded":
        return t[:1].expand(t.shape)
    return t


def make_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``[B, N, D]``, s ``[B, M, D]``, v ``[B, M, C]`` in the case's dtype and layout (s and v contiguous
    for ``expanded``, which shares q across the tasks)."""
    generator = torch.Generator().manual_seed(case.seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    q, s, v = randn(case.b, case.n, case.d), randn(case.b, case.m, case.d), randn(case.b, case.m, case.c)
    # Scale the points so that the scores reach about target_score: distances grow as 2·D·scale²,
    # dot products as √D·scale²; cosine is scale-free (its scores are at most 1/T).
    spread = {"sqeuclidean": 2 * case.d, "euclidean": math.sqrt(2 * case.d), "dot": math.sqrt(case.d)}
    if case.metric == "cosine":
        scale = 1.0
    elif case.metric == "euclidean":
        scale = case.target_score * case.temperature / spread["euclidean"]
    else:
        scale = math.sqrt(case.target_score * case.temperature / spread[case.metric])
    q, s = q * scale, s * scale
    if case.kind == "near-duplicates":
        # Support rows that copy query rows up to a relative 1e-4, far from the origin: the
        # expanded forms ‖x‖² + ‖y‖² − 2x·y and Σ G y + a x cancel.
        rows = torch.randint(0, case.n, (case.m,), generator=generator)
        offset = 100 * scale * randn(1, 1, case.d)
        q = q + offset
        s = q[:, rows] + 1e-4 * scale * randn(case.b, case.m, case.d)
    elif case.kind == "offset":
        q, s = q + 1e3 * scale, s + 1e3 * scale
    elif case.kind == "huge":
        q, s = q * 1e19, s * 1e19
    elif case.kind == "masked":
        s[:, : min(512, case.m - 1), 0] = math.inf  # distance inf: score −inf
    q, s, v = (t.to(case.dtype) for t in (q, s, v))
    return _laid_out(q, case.layout, generator), s, _laid_out(v, case.layout, generator) if case.layout != "expanded" else v


def _relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """max |actual − expected| / max(max |expected|, floor); inf for a NaN or Inf where the
    reference has none. `floor` is the size of the terms a gradient sums, for gradients that
    cancel to about 0 (cosine's in one dimension or between near-parallel rows)."""
    actual = actual.detach().double()
    if not torch.equal(actual.isfinite(), expected.isfinite()):
        return math.inf
    finite = expected.isfinite()
    if not finite.any():
        return 0.0
    difference = (actual[finite] - expected[finite]).abs().max().item()
    return difference / max(expected[finite].abs().max().item(), floor, 1e-300)


def _jacobian_size(metric: str, rows: torch.Tensor, others: torch.Tensor) -> float:
    """The largest |∂ value(x_i, y_j) / ∂x_i| over the pairs: 2‖x − y‖ (sqeuclidean), 1
    (euclidean), ‖y‖ (dot), 2 / ‖x‖ (cosine)."""
    x, y = rows.detach().double(), others.detach().double()
    if x.numel() == 0 or y.numel() == 0:
        return 0.0
    if metric == "sqeuclidean":
        return 2 * reference.pairwise_distance(x, y, "euclidean").nan_to_num(posinf=0.0).max().item()
    if metric == "euclidean":
        return 1.0
    if metric == "dot":
        return torch.linalg.vector_norm(y, dim=-1).max().item()
    return 2 / torch.linalg.vector_norm(x, dim=-1).clamp_min(reference.COSINE_EPS).min().item()


def _bound(case: Case, max_score: float, size: int) -> float:
    """The error allowed: a multiple of eps growing with the largest score and the sums' lengths."""
    return 64 * EPS[case.dtype] * (1 + max_score + size)


def _attention_failures(case: Case) -> list[str]:
    q, s, v = make_inputs(case)
    leaves = [t.detach().requires_grad_() for t in (q, s, v)]
    out = ops.episode_attention(*leaves, case.metric, case.temperature)
    exact = [t.detach().double().requires_grad_() for t in (q, s, v)]
    expected = reference.episode_attention(*exact, case.metric, case.temperature)
    generator = torch.Generator().manual_seed(case.seed + 1)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    scores = reference.similarity(*(t.detach() for t in exact[:2]), case.metric) / case.temperature
    finite = scores[scores.isfinite()]
    max_score = finite.abs().max().item() if finite.numel() else 0.0
    bound = _bound(case, max_score, case.m + case.d)
    failures = []
    error = _relative_error(out, expected)
    if not error <= bound:
        failures.append(f"{case}: forward error {error:.3g} > {bound:.3g}")
    grads = torch.autograd.grad(out, leaves, grad.to(case.dtype))
    expected_grads = torch.autograd.grad(expected, exact, grad)
    # Masked rows give the reference NaN gradients in q and s (0 · inf); their v gradient is 0.
    names = ("v",) if case.kind == "masked" else ("q", "s", "v")
    # Gradients that cancel to about 0 (a saturated softmax, M = 1, cosine in one dimension) are
    # compared with the size of the terms they sum: |dS_ij| ≤ p_ij (|dP_ij| + |δ_i|) and
    # Σ_j p_ij = 1, so a query's terms sum to at most 2 C max|dout| max|v| / T times the metric's
    # Jacobian, a support row's to N times that.
    per_query = 2 * case.c * grad.abs().max().item() * exact[2].detach().abs().max().item() / case.temperature
    floors = {
        "q": per_query * _jacobian_size(case.metric, exact[0], exact[1]),
        "s": case.n * per_query * _jacobian_size(case.metric, exact[1], exact[0]),
        "v": 0.0,
    }
    for name, mine, theirs in zip(("q", "s", "v"), grads, expected_grads):
        if name not in names:
            continue
        error = _relative_error(mine, theirs, floors[name])
        if not error <= bound:
            failures.append(f"{case}: d{name} error {error:.3g} > {bound:.3g}")
    # The backward's probabilities must sum to 1 per query: Σ_j dv_j = Σ_i dout_i, to rounding,
    # however large the scores (issue 16: exp(score − lse) with a rounded lse or an FMA did not).
    dv_sum, dout_sum = grads[2].double().sum(1), grad.sum(1)
    scale = grad.abs().sum(1).max().item()
    imbalance = (dv_sum - dout_sum).abs().max().item() / scale
    # (lse carries the rounding of max + log Σ, eps·|score| of the compute dtype: float64 for
    # float32 inputs, where it is negligible.)
    lse_rounding = max_score * EPS[torch.float64]
    if not imbalance <= 64 * (EPS[case.dtype] * (case.m + case.n) + lse_rounding):
        failures.append(f"{case}: Σ_j dv_j differs from Σ_i dout_i by {imbalance:.3g} (relative)")
    return failures


def _pairwise_failures(case: Case) -> list[str]:
    q, s, _ = make_inputs(case)
    leaves = [t.detach().requires_grad_() for t in (q, s)]
    out = ops.pairwise_distance(*leaves, case.metric)
    exact = [t.detach().double().requires_grad_() for t in (q, s)]
    expected = reference.pairwise_distance(*exact, case.metric)
    generator = torch.Generator().manual_seed(case.seed + 1)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    bound = _bound(case, 0.0, case.n + case.m + case.d)
    failures = []
    error = _relative_error(out, expected)
    if not error <= bound:
        failures.append(f"{case}: forward error {error:.3g} > {bound:.3g}")
    if case.kind == "masked":  # infinite rows: the reference's gradients are NaN (0 · inf)
        return failures
    grads = torch.autograd.grad(out, leaves, grad.to(case.dtype))
    expected_grads = torch.autograd.grad(expected, exact, grad)
    # Gradients that cancel to about 0 (cosine in one dimension) are compared with the size of the
    # terms they sum.
    floors = {"x": 0.0, "y": 0.0}
    if case.metric == "cosine":
        floors["x"] = case.m * grad.abs().max().item() * _jacobian_size("cosine", exact[0], exact[1])
        floors["y"] = case.n * grad.abs().max().item() * _jacobian_size("cosine", exact[1], exact[0])
    for name, mine, theirs in zip(("x", "y"), grads, expected_grads):
        error = _relative_error(mine, theirs, floors[name])
        if not error <= bound:
            failures.append(f"{case}: d{name} error {error:.3g} > {bound:.3g}")
    return failures


@pytest.mark.parametrize("op", ["pairwise_distance", "episode_attention"])
def test_matches_float64_reference(op: str) -> None:
    failures_of = _pairwise_failures if op == "pairwise_distance" else _attention_failures
    failures: list[str] = []
    # One thread: on a busy machine the thread pool's wake-ups cost more than these small cases
    # (the threaded schedules have their own tests).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for index in range(CASES):
            failures += failures_of(draw_case(index))
    finally:
        torch.set_num_threads(threads)
    assert not failures, f"{len(failures)} failures in {CASES} cases:\n" + "\n".join(failures[:20])


def test_cases_cover_what_they_claim() -> None:
    """The default stream reaches every metric, layout, kind, dtype, tile edge and score decade."""
    cases = [draw_case(index) for index in range(DEFAULT_CASES)]
    assert {c.metric for c in cases} == set(ops.METRICS)
    assert {c.layout for c in cases} == set(LAYOUTS)
    assert {c.kind for c in cases} == {"plain", "near-duplicates", "offset", "huge", "masked"}
    assert {c.dtype for c in cases} == {torch.float32, torch.float64}
    assert {1, 64, 65} <= {c.n for c in cases} and 1 in {c.d for c in cases}
    assert max(c.target_score for c in cases if c.dtype == torch.float64) > 1e5
