"""MAML meta-training throughput: the meta-batch vectorized with ``vmap`` against a per-task loop.

One meta-training step (adapt every task, query loss, meta-backward; no optimizer update) on
an Omniglot-shaped batch: 5-way 1-shot, 5 queries per class, 28×28 single-channel images,
Conv4 (64 channels), meta-batch of 32 tasks; 1 and 5 inner steps, second and first order.
Three paths: the whole meta-batch in one ``vmap``, ``vmap`` over chunks of 4 tasks
(``tasks_per_vmap=4``) and the per-task loop. Each case builds them in one process from the
same initialization, checks that their meta-gradients agree (so they compare the same
computation; this is also the warm-up), then times them in alternation, round after round, so
that the drifting load of a shared machine hits all alike. Time is the process's CPU time (user + system) of one step: with one intra-op
thread it is the step's cost, without the time spent waiting for a core; wall time is reported
too. Throughput is tasks/s = 32 / (median CPU seconds per step). Minor page faults per step are
reported because they explain much of the vmapped path's cost on CPU (see the "Performance
note" in fewcore.plugins/learners/maml.py).

Per-task overhead: the same step with a Conv4 of one hidden channel on 16×16 images, whose
arithmetic is negligible, times what each path spends on Python and dispatch, the most that vmap
can save over the loop.

Peak memory of second vs first order: each order runs one meta-training step in a fresh
process and reports the growth of the peak resident set size (``ru_maxrss``) over the
process's size just before the step (CPU tensors do not go through Python's allocator, so
``tracemalloc`` cannot see them); on CUDA ``torch.cuda.max_memory_allocated`` would be exact.

    FEWCORE_BENCH_THREADS=1 pytest benchmarks/test_bench_maml.py -s

Expect many minutes on 2 cores (the 5-step second-order case is the slow one).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fewcore
from fewcore import Episode
from fewcore.plugins.learners.maml import MAML

# FEWCORE_BENCH_THREADS pins the intra-op threads (as in test_bench_ops.py).
if os.environ.get("FEWCORE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FEWCORE_BENCH_THREADS"]))

META_BATCH, N_WAY, K_SHOT, Q_QUERY, SIDE = 32, 5, 1, 5, 28
ROUNDS = 3


def omniglot_like_batch(seed: int = 0, side: int = SIDE) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.randperm(N_WAY * K_SHOT, generator=gen) % N_WAY for _ in range(META_BATCH)])
    query_y = torch.stack([torch.randperm(N_WAY * Q_QUERY, generator=gen) % N_WAY for _ in range(META_BATCH)])
    return Episode(
        support_x=torch.rand(META_BATCH, N_WAY * K_SHOT, 1, side, side, generator=gen),
        support_y=support_y,
        query_x=torch.rand(META_BATCH, N_WAY * Q_QUERY, 1, side, side, generator=gen),
        query_y=query_y,
        n_way=N_WAY,
        k_shot=K_SHOT,
    )


def build(
    steps: int, order: str, task_batching: str, tasks_per_vmap: int = META_BATCH, hidden_channels: int = 64,
    side: int = SIDE,
) -> MAML:
    torch.manual_seed(0)
    backbone = fewcore.create("backbone", "conv4", in_channels=1, hidden_channels=hidden_channels)
    return MAML(
        backbone, n_way=N_WAY, inner_steps=steps, first_order=order == "first", task_batching=task_batching,
        tasks_per_vmap=tasks_per_vmap, item_shape=(1, side, side),
    )


#: the compared paths, in float32 and channels-first: the whole meta-batch in one vmap (a chunk
#: of META_BATCH tasks), vmap over chunks of 4, and the loop (the learner's default on the CPU,
#: the only path with the fused batch norm); benchmarks/peers/maml.py times the default options
#: against higher
PATHS = {"vmap": ("vmap", META_BATCH), "vmap, 4 tasks per chunk": ("vmap", 4), "loop": ("loop",)}


def meta_step(learner: MAML, episode: Episode) -> None:
    learner.zero_grad(set_to_none=True)
    learner(episode).loss.backward()


def _step_cost(learner: MAML, episode: Episode) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and minor page faults of one meta-training step."""
    usage, cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    meta_step(learner, episode)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - usage.ru_minflt
    return time.process_time() - cpu, time.perf_counter() - wall, faults


@pytest.mark.parametrize("order", ["second", "first"])
@pytest.mark.parametrize("steps", [1, 5])
def test_maml_meta_training_throughput_vmap_vs_loop(steps: int, order: str, record_property, capsys) -> None:
    episode = omniglot_like_batch()
    learners = {path: build(steps, order, *how) for path, how in PATHS.items()}
    gradients = {}
    for path, learner in learners.items():
        meta_step(learner, episode)
        gradients[path] = torch.cat([p.grad.flatten() for p in learner.parameters()])
    # float32: the batched and per-task convolutions sum in different orders (measured: 2e-4 of the
    # norm after 5 inner steps), so compare the whole meta-gradient by norm (conv biases before
    # batch norm have a true gradient of 0 and only noise); tests/plugins/test_maml.py checks
    # agreement to 1e-9 in float64
    for path in PATHS:
        assert (gradients[path] - gradients["loop"]).norm() <= 1e-3 * gradients["loop"].norm(), path

    costs: dict[str, list[tuple[float, float, int]]] = {path: [] for path in learners}
    for _ in range(ROUNDS):
        for path, learner in learners.items():
            costs[path].append(_step_cost(learner, episode))
    report = {}
    for path, rounds in costs.items():
        cpu, wall, faults = (statistics.median(column) for column in zip(*rounds))
        report[path] = META_BATCH / cpu
        record_property(f"{path} tasks/s", round(META_BATCH / cpu, 2))
        record_property(f"{path} CPU s per step", [round(r[0], 2) for r in rounds])
        with capsys.disabled():
            print(
                f"\nMAML {steps} inner step(s), {order} order, {path}: {META_BATCH / cpu:.2f} tasks/s "
                f"(CPU s per step {[round(r[0], 2) for r in rounds]}, wall median {wall:.2f} s, "
                f"{faults:.0f} minor page faults per step, {torch.get_num_threads()} thread(s))"
            )
    with capsys.disabled():
        for path in [path for path in PATHS if path != "loop"]:
            print(f"MAML {steps} inner step(s), {order} order: {path} / loop = {report[path] / report['loop']:.2f}")


def test_maml_per_task_overhead(capsys) -> None:
    """The most vmap can save: the same meta-step (1 inner step, second order) on a Conv4 of one
    hidden channel and 16×16 images, whose arithmetic is negligible, so what is left is each
    path's Python and dispatch work. Compare it with the full-size loop step above."""
    episode = omniglot_like_batch(side=16)
    learners = {path: build(1, "second", *how, hidden_channels=1, side=16) for path, how in PATHS.items()}
    for learner in learners.values():
        meta_step(learner, episode)
    cpu = {
        path: statistics.median(_step_cost(learner, episode)[0] for _ in range(ROUNDS))
        for path, learner in learners.items()
    }
    with capsys.disabled():
        print("\nMAML per-step overhead (1 inner step, second order, 1-channel Conv4, 16x16): "
              + ", ".join(f"{path} {seconds:.3f} CPU s" for path, seconds in cpu.items()))
    assert cpu["vmap"] < cpu["loop"]  # the loop's per-task Python and dispatch work is what vmap removes


_PEAK_SCRIPT = """
import json, resource, sys, torch
sys.path.insert(0, {here!r})
from test_bench_maml import build, meta_step, omniglot_like_batch
torch.set_num_threads({threads})
learner, episode = build({steps}, {order!r}, {batching!r}), omniglot_like_batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
meta_step(learner, episode)
print(json.dumps({{"peak_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}}))
"""


@pytest.mark.parametrize("steps", [1, 5])
def test_maml_peak_memory_second_vs_first_order(steps: int, record_property, capsys) -> None:
    """Peak RSS growth of one meta-training step (vmapped), in a fresh process per order."""
    growth = {}
    for order in ("second", "first"):
        script = _PEAK_SCRIPT.format(
            here=str(Path(__file__).parent), threads=torch.get_num_threads(), steps=steps, order=order, batching="vmap"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        growth[order] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kib"] / 1024
        record_property(f"peak_growth_mib_{order}", round(growth[order], 1))
    with capsys.disabled():
        print(
            f"\nMAML {steps} inner step(s), meta-batch {META_BATCH}: peak RSS growth of a meta-training step "
            f"{growth['second']:.0f} MiB second order, {growth['first']:.0f} MiB first order "
            f"({growth['second'] / growth['first']:.1f}x)"
        )
    assert growth["second"] > growth["first"] > 0  # the inner-loop graph is what second order keeps
