"""MAML meta-training throughput: the meta-batch vectorized with ``vmap`` against a per-task loop.

One meta-training step (adapt every task, query loss, meta-backward; no optimizer update) on
an Omniglot-shaped batch: 5-way 1-shot, 5 queries per class, 28×28 single-channel images,
Conv4 (64 channels), meta-batch of 32 tasks; 1 and 5 inner steps, second and first order.
Throughput is tasks/s = 32 / (median seconds per step). Before timing, each case checks that
the vmapped and looped meta-gradients agree, so the two paths compare the same computation.

Peak memory of second vs first order: each order runs one meta-training step in a fresh
process and reports the growth of the peak resident set size (``ru_maxrss``) over the
process's size just before the step (CPU tensors do not go through Python's allocator, so
``tracemalloc`` cannot see them); on CUDA ``torch.cuda.max_memory_allocated`` would be exact.

    pytest benchmarks/test_bench_maml.py --benchmark-enable --benchmark-columns=median,rounds \
        --benchmark-group-by=param:steps,param:order

Expect minutes on 2 cores (the 5-step second-order case is the slow one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewcore
from fewcore import Episode
from fewcore_plugins.learners.maml import MAML

META_BATCH, N_WAY, K_SHOT, Q_QUERY, SIDE = 32, 5, 1, 5, 28


def omniglot_like_batch(seed: int = 0) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.randperm(N_WAY * K_SHOT, generator=gen) % N_WAY for _ in range(META_BATCH)])
    query_y = torch.stack([torch.randperm(N_WAY * Q_QUERY, generator=gen) % N_WAY for _ in range(META_BATCH)])
    return Episode(
        support_x=torch.rand(META_BATCH, N_WAY * K_SHOT, 1, SIDE, SIDE, generator=gen),
        support_y=support_y,
        query_x=torch.rand(META_BATCH, N_WAY * Q_QUERY, 1, SIDE, SIDE, generator=gen),
        query_y=query_y,
        n_way=N_WAY,
        k_shot=K_SHOT,
    )


def build(steps: int, order: str, task_batching: str) -> MAML:
    torch.manual_seed(0)
    backbone = fewcore.create("backbone", "conv4", in_channels=1)
    return MAML(backbone, n_way=N_WAY, inner_steps=steps, first_order=order == "first", task_batching=task_batching)


def meta_step(learner: MAML, episode: Episode) -> None:
    learner.zero_grad(set_to_none=True)
    learner(episode).loss.backward()


@pytest.mark.parametrize("task_batching", ["vmap", "loop"])
@pytest.mark.parametrize("order", ["second", "first"])
@pytest.mark.parametrize("steps", [1, 5])
def test_maml_meta_training_throughput(benchmark, steps: int, order: str, task_batching: str) -> None:
    episode = omniglot_like_batch()
    learner = build(steps, order, task_batching)
    other = build(steps, order, "loop" if task_batching == "vmap" else "vmap")
    meta_step(learner, episode)
    meta_step(other, episode)
    # float32: the batched and per-task convolutions sum in different orders (measured: 2e-4 of the
    # norm after 5 inner steps), so compare the whole
    # meta-gradient by norm (conv biases before batch norm have a true gradient of 0 and only
    # noise); tests/plugins/test_maml.py checks agreement to 1e-9 in float64
    mine = torch.cat([p.grad.flatten() for p in learner.parameters()])
    theirs = torch.cat([p.grad.flatten() for p in other.parameters()])
    assert (mine - theirs).norm() <= 1e-3 * theirs.norm()
    del other
    benchmark.extra_info.update(threads=torch.get_num_threads(), torch=torch.__version__, meta_batch=META_BATCH)
    benchmark.pedantic(meta_step, args=(learner, episode), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tasks_per_s"] = META_BATCH / benchmark.stats.stats.median


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
