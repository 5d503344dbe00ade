"""fewcore's kernels against what a user would write instead, timed in the same run.

Baselines: (a) the eager composite (``torch.cdist``; normalize + matmul + softmax + matmul),
(b) ``torch.compile`` of that composite, (c) for attention ``F.scaled_dot_product_attention``
on normalized inputs with the values zero-padded to D. Distances use the euclidean metric (what
``torch.cdist`` computes), attention the cosine one (Matching Networks), temperature 1.

Run ``python benchmarks/ops_table.py`` (add ``--large`` for the large shapes) to produce the
table in benchmarks/README.md; or ``pytest benchmarks/test_bench_ops.py --benchmark-enable
-m "not large"`` for the raw pytest-benchmark output.
"""

from __future__ import annotations

import os
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import fewcore.ops as ops

# FEWCORE_BENCH_THREADS pins the intra-op threads of every implementation alike (ops_table.py
# --threads): on a shared, oversubscribed machine a 2-thread team mostly measures how long the
# second thread waits for a time slice.
if os.environ.get("FEWCORE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FEWCORE_BENCH_THREADS"]))

#: episode shapes (B, N, M, D): B tasks, N = 75 queries (5-way 15-query), M support rows
EPISODE_SHAPES = [(b, 75, m, d) for b in (1, 32) for m in (5, 25) for d in (64, 512, 1600)]
#: attention values: one-hot labels of a 5-way episode; 64 columns at the large shape
EPISODE_C, LARGE_C = 5, 64
LARGE_DISTANCE = (1, 4096, 4096, 512)
LARGE_ATTENTION = (1, 16384, 16384, 256)


def distance_eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, y)


def distance_fewcore(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ops.pairwise_distance(x, y, "euclidean")


def gemm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Not a distance: the machine's float32 GEMM on the same operands, as a speed reference."""
    return torch.bmm(x, y.transpose(1, 2))


def attention_eager(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)
    return torch.softmax(scores, dim=-1) @ v


def attention_sdpa(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    padded = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
    out = F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(s, dim=-1), padded, scale=1.0)
    return out[..., : v.shape[-1]]


def attention_fewcore(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ops.episode_attention(q, s, v, "cosine", 1.0)


IMPLEMENTATIONS: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "distance": {
        "fewcore": distance_fewcore,
        "eager": distance_eager,
        "compiled": torch.compile(distance_eager),
    },
    "attention": {
        "fewcore": attention_fewcore,
        "eager": attention_eager,
        "compiled": torch.compile(attention_eager),
        "sdpa": attention_sdpa,
    },
}


def _inputs(op: str, shape: tuple[int, int, int, int], c: int, grad: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, n, m, d = shape
    tensors = [torch.randn(b, n, d, generator=gen), torch.randn(b, m, d, generator=gen)]
    if op == "attention":
        tensors.append(torch.randn(b, m, c, generator=gen))
    return [t.requires_grad_(grad) for t in tensors]


def _runner(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    if not backward:

        def forward() -> object:
            with torch.no_grad():
                return fn(*inputs)

        return forward
    grad_out = torch.randn_like(fn(*inputs))

    def forward_backward() -> object:
        return torch.autograd.grad(fn(*inputs), inputs, grad_out)

    return forward_backward


def _bench(benchmark, op: str, impl: str, shape: tuple[int, ...], c: int, backward: bool, **pedantic) -> None:
    fn = IMPLEMENTATIONS[op][impl] if impl != "gemm" else gemm
    run = _runner(fn, _inputs(op, shape, c, backward), backward)
    run()  # compiles (torch.compile) and warms caches outside the timing
    b, n, m, d = shape
    direction = "forward+backward" if backward else "forward"
    benchmark.group = f"{op} {direction} B={b} N={n} M={m} D={d}"
    benchmark.extra_info.update(op=op, impl=impl, direction=direction, B=b, N=n, M=m, D=d, C=c,
                                threads=torch.get_num_threads(), torch=torch.__version__)
    if pedantic:
        benchmark.pedantic(run, **pedantic)
    else:
        benchmark(run)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("shape", EPISODE_SHAPES, ids=lambda s: "B{}-N{}-M{}-D{}".format(*s))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS["distance"]))
def test_distance_episode(benchmark, impl: str, shape: tuple[int, ...], backward: bool) -> None:
    _bench(benchmark, "distance", impl, shape, EPISODE_C, backward)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("shape", EPISODE_SHAPES, ids=lambda s: "B{}-N{}-M{}-D{}".format(*s))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS["attention"]))
def test_attention_episode(benchmark, impl: str, shape: tuple[int, ...], backward: bool) -> None:
    _bench(benchmark, "attention", impl, shape, EPISODE_C, backward)


@pytest.mark.large
@pytest.mark.parametrize("impl", ["fewcore", "eager", "compiled", "gemm"])
def test_distance_large(benchmark, impl: str) -> None:
    _bench(benchmark, "distance", impl, LARGE_DISTANCE, LARGE_C, False, rounds=5, iterations=1)


@pytest.mark.large
@pytest.mark.parametrize("impl", ["fewcore", "eager", "sdpa"])
def test_attention_large(benchmark, impl: str) -> None:
    _bench(benchmark, "attention", impl, LARGE_ATTENTION, LARGE_C, False, rounds=3, iterations=1)
