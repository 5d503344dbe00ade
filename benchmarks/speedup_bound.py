"""How large a forward+backward speed-up over the eager composite fewcore's design can reach.

A differentiable fewcore call at an episode shape costs at least (1) the batched matrix products
its forward and backward must compute, at the speed of the machine's BLAS (``torch.bmm`` on
operands of the same shapes, called bare), plus (2) the fixed cost of one ``torch.autograd.grad``
through one graph node, the smaller of two timed on their own with warm caches on 1-element
tensors: a Python ``torch.autograd.Function`` that saves its two inputs and only allocates its
output and gradients (what the ops use under ``torch.func``, see fewcore/ops/_compiled.py), and a
built-in op with a C++ node (``torch.cat``; plain eager calls of the ops record a C++ node). The
eager composite's median divided by that floor, the ``bound``, is the largest speed-up an
implementation that goes through autograd can reach at the shape; where it is below the issue's
3×, the target is out of reach there.

The products counted (B tasks, N queries, M support rows, D features, C value columns):
- distances: the forward's ``x yᵀ`` [B,N,M] and the backward's ``g y`` [B,N,D] and ``gᵀ x`` [B,M,D];
- attention: the forward's ``q sᵀ`` [B,N,M] and ``p v`` [B,N,C], the backward's ``dO vᵀ`` [B,N,M],
  ``dS s`` [B,N,D] and ``dSᵀ q`` [B,M,D].
Everything else (norms, square roots, the softmax, argument checks) is left out, and the eager
composite is timed interleaved with the others, caches as cold as theirs: the floor is an
underestimate and the bound an overestimate. The ``bare kernels`` column is fewcore's forward and
backward kernels called directly (no argument checks, no autograd): what fewcore spends above the
products there goes to its own arithmetic; above the bare kernels, to its Python wrapper and
autograd.

    python benchmarks/speedup_bound.py --threads 1

Every runner is timed in turn inside one loop (distance_timing.interleaved_medians); with one
thread the clock is the calling thread's CPU time, with more it is wall time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import attention_kernel_timing
import test_bench_ops as bench
import torch
from distance_timing import bare_kernels, interleaved_medians

TARGET = 3.0


class _AllocatingFunction(torch.autograd.Function):
    """What a Python autograd.Function costs with no arithmetic: save the inputs, allocate results."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.empty_like(a), torch.empty_like(b)


def products(op: str, inputs: list[torch.Tensor]) -> Callable[[], object]:
    """The bare batched products a forward+backward of ``op`` computes, on operands of its shapes."""
    gen = torch.Generator().manual_seed(1)
    x, y = (t.detach() for t in inputs[:2])
    b, n, m = x.shape[0], x.shape[1], y.shape[1]
    g = torch.randn(b, n, m, generator=gen)
    if op == "distance":

        def run() -> object:
            return torch.bmm(x, y.transpose(1, 2)), torch.bmm(g, y), torch.bmm(g.transpose(1, 2), x)

        return run
    v = inputs[2].detach()
    grad_out = torch.randn(b, n, v.shape[2], generator=gen)

    def run_attention() -> object:
        return (torch.bmm(x, y.transpose(1, 2)), torch.bmm(g, v), torch.bmm(grad_out, v.transpose(1, 2)),
                torch.bmm(g, y), torch.bmm(g.transpose(1, 2), x))

    return run_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per op and shape")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    tiny = [torch.zeros(1, 1, 1, requires_grad=True) for _ in range(2)]
    fixed = {
        "Python Function": bench._runner(_AllocatingFunction.apply, tiny, True),
        "torch.cat": bench._runner(lambda a, b: torch.cat([a, b]), tiny, True),
    }
    fixed_ms = {name: 1e3 * t for name, t in interleaved_medians(fixed, 10 * args.rounds, args.budget, clock).items()}
    floor = min(fixed_ms.values())
    print(f"threads={torch.get_num_threads()} torch {torch.__version__}; forward+backward, median ms of "
          f"{clock.__name__}; one graph node on 1-element tensors: "
          f"{', '.join(f'{name} {t:.3f} ms' for name, t in fixed_ms.items())}; "
          f"bound = eager / (products + {floor:.3f} ms); target {TARGET:g}x\n")
    print("| op | B×N×M×D | fewcore | eager | speed-up | bare kernels | products | bound |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for op in ("distance", "attention"):
        for shape in bench.EPISODE_SHAPES:
            inputs = bench._inputs(op, shape, bench.EPISODE_C, True)
            runs = {
                "fewcore": bench._runner(bench.IMPLEMENTATIONS[op]["fewcore"], inputs, True),
                "eager": bench._runner(bench.IMPLEMENTATIONS[op]["eager"], inputs, True),
                "bare kernels": (bare_kernels(inputs, True) if op == "distance" else
                                 attention_kernel_timing.runners(shape, bench.EPISODE_C, False)["fewcore fwd+bwd"]),
                "products": products(op, inputs),
            }
            ms = {name: 1e3 * t for name, t in interleaved_medians(runs, args.rounds, args.budget, clock).items()}
            bound = ms["eager"] / (ms["products"] + floor)
            print(f"| {op} | {'×'.join(map(str, shape))} | {ms['fewcore']:.3f} | {ms['eager']:.3f} | "
                  f"{ms['eager'] / ms['fewcore']:.2f}× | {ms['bare kernels']:.3f} | {ms['products']:.3f} | "
                  f"{bound:.2f}×{'' if bound >= TARGET else ' (< 3×)'} |", flush=True)


if __name__ == "__main__":
    main()
