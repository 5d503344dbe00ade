"""Interleaved timings of the raw episode_attention kernels against the eager composite.

Calls ``torch.ops.fewcore.episode_attention`` and ``torch.ops.fewcore._episode_attention_backward``
directly (no Python wrapper, no autograd), so the numbers are the kernels' own cost including the
C++ dispatcher call. The eager composite is the one in ``test_bench_ops.py`` (normalize + matmul
+ softmax + matmul, cosine, T = 1), timed forward and forward+backward through autograd.

Each round times every implementation once per shape in turn (interleaved, so that load on the
shared machine hits all of them alike); the table shows medians over rounds.

    PYTHONPATH=$PWD python benchmarks/attention_kernel_timing.py --threads 1
    PYTHONPATH=$PWD python benchmarks/attention_kernel_timing.py --threads 2 --large
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fewcore.ops._compiled  # noqa: F401  (loads fewcore._C, which registers the ops)

COSINE = 2
EPISODE_SHAPES = [(b, 75, m, d) for b in (1, 32) for m in (5, 25) for d in (64, 512, 1600)]


def eager(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)
    return torch.softmax(scores, dim=-1) @ v


def sdpa(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    padded = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
    out = F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(s, dim=-1), padded, scale=1.0)
    return out[..., : v.shape[-1]]


def runners(shape: tuple[int, int, int, int], c: int, large: bool) -> dict[str, Callable[[], object]]:
    b, n, m, d = shape
    gen = torch.Generator().manual_seed(0)
    q, s, v = (torch.randn(b, rows, width, generator=gen) for rows, width in ((n, d), (m, d), (m, c)))
    grad = torch.randn(b, n, c, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (q, s, v)]

    def kernel_forward() -> object:
        return torch.ops.fewcore.episode_attention(q, s, v, COSINE, 1.0)

    def kernel_forward_backward() -> object:
        out, lse = torch.ops.fewcore.episode_attention(q, s, v, COSINE, 1.0)
        return torch.ops.fewcore._episode_attention_backward(grad, q, s, v, out, lse, COSINE, 1.0)

    def eager_forward() -> object:
        with torch.no_grad():
            return eager(q, s, v)

    def eager_forward_backward() -> object:
        return torch.autograd.grad(eager(*leaves), leaves, grad)

    if large:
        def sdpa_forward() -> object:
            with torch.no_grad():
                return sdpa(q, s, v)

        return {"fewcore fwd": kernel_forward, "eager fwd": eager_forward, "sdpa fwd": sdpa_forward}
    return {
        "fewcore fwd": kernel_forward,
        "eager fwd": eager_forward,
        "fewcore fwd+bwd": kernel_forward_backward,
        "eager fwd+bwd": eager_forward_backward,
    }


def time_once(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--large", action="store_true", help="16384×16384×256, C = 64, forward only")
    parser.add_argument("--n", type=int, default=16384, help="queries and support rows of --large")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.large:
        shapes, c, rounds = [(1, args.n, args.n, 256)], 64, min(args.rounds, 5)
    else:
        shapes, c, rounds = EPISODE_SHAPES, 5, args.rounds
    table = {shape: runners(shape, c, args.large) for shape in shapes}
    times: dict[tuple, dict[str, list[float]]] = {shape: {name: [] for name in fns} for shape, fns in table.items()}
    for fns in table.values():  # warm-up
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for shape, fns in table.items():
            for name, fn in fns.items():
                # ~20 ms of calls per sample at episode sizes, one call at large ones
                repeat = 1 if args.large else max(1, int(20 / max(time_once(fn, 1), 0.01)))
                times[shape][name].append(time_once(fn, repeat))
    names = list(next(iter(times.values())))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {rounds} rounds, medians in ms")
    print("| B×N×M×D | " + " | ".join(names) + " | speed-ups vs eager |")
    print("| --- " * (len(names) + 2) + "|")
    for shape, by_name in times.items():
        med = {name: statistics.median(samples) for name, samples in by_name.items()}
        ratios = []
        for name in names:
            if name.startswith("fewcore"):
                direction = name.split()[1]
                ratios.append(f"{direction} {med['eager ' + direction] / med[name]:.2f}×")
            elif name.startswith("sdpa"):
                ratios.append(f"fewcore vs sdpa {med[name] / med['fewcore fwd']:.2f}×")
        cells = " | ".join(f"{med[name]:.4g}" for name in names)
        print(f"| {'×'.join(map(str, shape))} | {cells} | {', '.join(ratios)} |")


if __name__ == "__main__":
    main()
