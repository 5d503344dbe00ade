"""Interleaved medians of fewcore's pairwise_distance against torch.cdist and torch.compile(cdist).

A quick check between full table runs (benchmarks/ops_table.py): every implementation is timed in
turn inside one loop, so a burst of load on the shared machine hits them all alike.

    python benchmarks/distance_timing.py --threads 1            # episode shapes, forward and fwd+bwd
    python benchmarks/distance_timing.py --threads 2 --large    # 4096x4096x512 forward and the GEMM rate
    python benchmarks/distance_timing.py --threads 1 --breakdown --impls fewcore,eager

--breakdown adds where fewcore's time per call goes: ``kernels``, the two compiled kernels called
directly (no argument checks, no autograd), and ``one-op autograd``, ``torch.autograd.grad``
through one cheap op of both inputs (torch.cat), the least any differentiable call costs.

With --threads 1 the clock is the calling thread's CPU time (time.thread_time): on an
oversubscribed machine it leaves out the time slices other processes take, which wall time does
not; with more threads it is wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import fewcore.ops._compiled  # noqa: F401  (loads fewcore._C, which registers the ops)
from fewcore.ops._reference import METRICS

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_ops as bench  # noqa: E402


def interleaved_medians(runs: dict[str, Callable[[], object]], rounds: int, budget_s: float,
                        clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call of each runner, timing them in turn for ``rounds`` rounds (or the budget)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    deadline = time.perf_counter() + budget_s
    for _ in range(rounds):
        for name, run in runs.items():
            start = clock()
            run()
            times[name].append(clock() - start)
        if time.perf_counter() > deadline:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def bare_kernels(inputs: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    """The euclidean forward kernel (and the backward kernel) on ``inputs``, without autograd."""
    x, y = (t.detach() for t in inputs)
    euclidean = METRICS.index("euclidean")  # the kernels' metric code
    grad = torch.randn(x.shape[0], x.shape[1], y.shape[1])

    def run() -> object:
        out = torch.ops.fewcore.pairwise_distance(x, y, euclidean)
        return torch.ops.fewcore._pairwise_distance_backward(grad, x, y, out, euclidean) if backward else out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per shape and direction")
    parser.add_argument("--impls", default="fewcore,eager,compiled")
    parser.add_argument("--breakdown", action="store_true", help="also time the bare kernels and a one-op autograd call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    impls = args.impls.split(",")
    shapes = [bench.LARGE_DISTANCE] if args.large else bench.EPISODE_SHAPES
    directions = [False] if args.large else [False, True]
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"threads={torch.get_num_threads()} torch {torch.__version__}; median ms of {clock.__name__} "
          "(speed-up = baseline / fewcore)")
    for backward in directions:
        for shape in shapes:
            inputs = bench._inputs("distance", shape, bench.EPISODE_C, backward)
            runs = {impl: bench._runner(bench.IMPLEMENTATIONS["distance"][impl], inputs, backward) for impl in impls}
            if args.large:
                runs["gemm"] = bench._runner(bench.gemm, inputs, False)
            if args.breakdown:
                runs["kernels"] = bare_kernels(inputs, backward)
                runs["one-op autograd"] = bench._runner(lambda x, y: torch.cat([x, y], dim=1), inputs, backward)
            med = interleaved_medians(runs, 5 if args.large else args.rounds, 1e9 if args.large else args.budget, clock)
            ours = med.get("fewcore")
            cells = [f"{name} {1e3 * t:.3f}" + (f" ({t / ours:.2f}x)" if ours and name != "fewcore" else "")
                     for name, t in med.items()]
            line = f"{'fwd+bwd' if backward else 'fwd    '} {'x'.join(map(str, shape)):>14}: " + ", ".join(cells)
            if args.large:
                flops = 2 * shape[0] * shape[1] * shape[2] * shape[3]
                line += f"; GEMM {flops / med['gemm'] / 1e9:.0f} GFLOP/s, fewcore at {100 * med['gemm'] / ours:.0f}% of it"
            print(line, flush=True)


if __name__ == "__main__":
    main()
