"""ANIL against MAML, and Reptile's per-task loop against its vmapped inner loops: meta-training throughput.

One meta-training step (forward and meta-backward; no optimizer update) on an Omniglot-shaped
meta-batch: 28×28 single-channel images, Conv4 with 64 channels, 5-way, 5 queries per class.

* **ANIL vs MAML** (issue 18: ANIL at least 2× MAML's tasks/s): both second order with the same
  number of inner steps (1 and 5), 1-shot, meta-batch 8; MAML with its default task batching.
* **Reptile, loop vs vmap**: 5 inner SGD steps on 5-way 5-shot support sets, meta-batch 8; the
  loop, vmap in chunks of 4 tasks and vmap over the whole meta-batch. Their meta-gradients are
  checked to agree first (this is also the warm-up).

The paths of a case are built in one process and timed in alternation, round after round, so
that the drifting load of a shared machine hits all alike. Time is the process's CPU time of one
step (with one intra-op thread, the step's cost without the time spent waiting for a core);
tasks/s = 8 / median CPU seconds. Each case prints the median and min–max of every path and the
ratio of the medians.

    FEWCORE_BENCH_THREADS=1 pytest benchmarks/test_bench_anil_reptile.py -s
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import pytest
import torch

import fewcore
from fewcore import Episode, Learner
from fewcore.plugins.learners.anil import ANIL
from fewcore.plugins.learners.maml import MAML
from fewcore.plugins.learners.reptile import Reptile
from fewcore.testing import random_episode

# FEWCORE_BENCH_THREADS pins the intra-op threads (as in test_bench_ops.py).
if os.environ.get("FEWCORE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FEWCORE_BENCH_THREADS"]))

META_BATCH, ITEM_SHAPE, ROUNDS = 8, (1, 28, 28), 5


def _conv4() -> fewcore.Backbone:
    torch.manual_seed(0)
    return fewcore.create("backbone", "conv4", hidden_channels=64, item_shape=ITEM_SHAPE)


def _step_seconds(learner: Learner, episode: Episode) -> float:
    start = time.process_time()
    learner.zero_grad(set_to_none=True)
    learner(episode).loss.backward()
    return time.process_time() - start


def _compare(paths: dict[str, Learner], episode: Episode, title: str) -> dict[str, float]:
    """Time the paths in alternation; print and return the median CPU seconds per step."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, learner in paths.items():
            times[name].append(_step_seconds(learner, episode))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{title} (torch {torch.__version__}, {torch.get_num_threads()} thread(s), {ROUNDS} rounds)")
    for name, t in times.items():
        print(
            f"  {name:>16}: {medians[name]:.3f} s/step (min {min(t):.3f}, max {max(t):.3f}), "
            f"{META_BATCH / medians[name]:.1f} tasks/s"
        )
    return medians


@pytest.mark.parametrize("inner_steps", [1, 5])
def test_anil_vs_maml_tasks_per_second(inner_steps: int) -> None:
    episode = random_episode(ITEM_SHAPE, n_way=5, k_shot=1, q_query=5, batch_size=META_BATCH, seed=0)
    paths: dict[str, Learner] = {
        "MAML": MAML(_conv4(), n_way=5, inner_steps=inner_steps, inner_lr=0.1, item_shape=ITEM_SHAPE),
        "ANIL": ANIL(_conv4(), n_way=5, inner_steps=inner_steps, inner_lr=0.1, item_shape=ITEM_SHAPE),
    }
    for learner in paths.values():  # warm-up
        _step_seconds(learner, episode)
    medians = _compare(paths, episode, f"ANIL vs MAML, second order, {inner_steps} inner step(s)")
    print(f"  ANIL / MAML tasks/s: {medians['MAML'] / medians['ANIL']:.2f}x")


def test_reptile_loop_vs_vmap() -> None:
    episode = random_episode(ITEM_SHAPE, n_way=5, k_shot=5, q_query=1, batch_size=META_BATCH, seed=0)
    build: Callable[[str, int | None], Reptile] = lambda batching, chunk: Reptile(  # noqa: E731
        _conv4(), n_way=5, inner_steps=5, inner_lr=0.1, inner_optimizer="sgd", task_batching=batching,
        tasks_per_vmap=chunk, item_shape=ITEM_SHAPE,
    )
    paths: dict[str, Learner] = {
        "loop": build("loop", None), "vmap, chunks of 4": build("vmap", 4), "vmap, all 8": build("vmap", META_BATCH)
    }
    gradients = {}
    for name, learner in paths.items():
        _step_seconds(learner, episode)
        gradients[name] = [p.grad for p in learner.parameters()]
    for name in paths:
        for got, want in zip(gradients[name], gradients["loop"]):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    medians = _compare(paths, episode, "Reptile, 5 inner SGD steps, 5-way 5-shot")
    for name in list(paths)[1:]:
        print(f"  {name} / loop time: {medians[name] / medians['loop']:.2f}x")
