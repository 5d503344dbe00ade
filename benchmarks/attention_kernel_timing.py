"""Interleaved timings of the raw episode_attention kernels against the eager composite.

Calls ``torch.ops.fewcore.episode_attention`` and ``torch.ops.fewcore._episode_attention_backward``
directly (no Python wrapper, no autograd), so the numbers are the kernels' own cost including the
C++ dispatcher call. The eager composite is the one in ``test_bench_ops.py`` (normalize + matmul
+ softmax + matmul, cosine, T = 1), timed forward and forward+backward through autograd.

With --threads 1 each call is timed in CPU time of the calling thread (which runs everything
then), so that other jobs' time slices on the shared machine do not count; the cache effects of
sharing remain. The implementations are called one after the other, each call timed on its own, for --seconds
per shape (interleaved, so that load on the shared machine hits all of them alike); the table
shows the medians of the single calls.

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

    # As fewcore.ops calls them: the forward saves the metric's values where the task is small.
    save_values = n * m <= fewcore.ops._compiled._SAVED_VALUES_MAX_ENTRIES

    def kernel_forward() -> object:
        return torch.ops.fewcore.episode_attention(q, s, v, COSINE, 1.0, save_values)

    def kernel_forward_backward() -> object:
        out, lse, values = torch.ops.fewcore.episode_attention(q, s, v, COSINE, 1.0, save_values)
        return torch.ops.fewcore._episode_attention_backward(grad, q, s, v, out, lse, values, COSINE, 1.0)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per shape (all implementations)")
    parser.add_argument("--large", action="store_true", help="N×N×256 with C = 64, forward only")
    parser.add_argument("--n", type=int, default=16384, help="queries and support rows of --large")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # With one thread every call runs on this thread: its CPU time leaves out the time slices
    # the shared machine's other jobs take (wall time otherwise).
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    shapes, c = ([(1, args.n, args.n, 256)], 64) if args.large else (EPISODE_SHAPES, 5)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, medians of single calls in ms "
        f"({'thread CPU time' if args.threads == 1 else 'wall time'})"
    )
    names: list[str] = []
    for shape in shapes:
        fns = runners(shape, c, args.large)
        names = list(fns)
        for fn in fns.values():  # warm-up
            fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        deadline = time.perf_counter() + args.seconds
        # Calls interleaved one by one, so that load on the shared machine hits all alike.
        while time.perf_counter() < deadline or len(samples[names[0]]) < 3:
            for name, fn in fns.items():
                start = clock()
                fn()
                samples[name].append((clock() - start) * 1e3)
        med = {name: statistics.median(values) for name, values in samples.items()}
        if shape == shapes[0]:
            print("| B×N×M×D | calls | " + " | ".join(names) + " | speed-ups |")
            print("| --- " * (len(names) + 3) + "|")
        ratios = []
        for name in names:
            if name.startswith("fewcore"):
                direction = name.split()[1]
                ratios.append(f"{direction} {med['eager ' + direction] / med[name]:.2f}× eager")
            elif name.startswith("sdpa"):
                ratios.append(f"{med[name] / med['fewcore fwd']:.2f}× sdpa")
        cells = " | ".join(f"{med[name]:.4g}" for name in names)
        print(f"| {'×'.join(map(str, shape))} | {len(samples[names[0]])} | {cells} | {', '.join(ratios)} |", flush=True)


if __name__ == "__main__":
    main()
