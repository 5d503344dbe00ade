"""MAML meta-training throughput: fewcore's ``maml`` learner against higher 0.2.1 (issue 15).

Both sides meta-train the same network from the same initialization on the same pre-sampled
meta-batches: Conv4 (64 channels, batch norm with batch statistics) and a linear 5-way head,
5-way 1-shot 15-query tasks on 28×28 Omniglot characters (or generated glyphs), meta-batch 32,
inner SGD with step size 0.4, Adam as the meta-optimizer. Four cases: second and first order,
1 and 5 inner steps. One meta-training step is: adapt every task, query loss, meta-backward,
meta-optimizer step.

* **higher** is used as its README and MAML example teach: a per-task loop over
  ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False)``, ``diffopt.step(support_loss)``,
  then ``query_loss.backward()`` inside the context. First order is
  ``track_higher_grads=False``; there the adapted weights are detached copies, so
  ``query_loss.backward()`` leaves the model's gradients empty and the meta-optimizer would
  train nothing: the baseline adds the query gradient at the adapted weights (the FOMAML
  meta-gradient) to the model's gradients itself.
* **fewcore** is the registered learner with its default options, run as ``fewcore train``
  runs it: under the engine's compute mode for the CPU (``train.precision`` and
  ``train.channels_last`` at ``"auto"``: bfloat16 autocast and channels-last where the CPU has
  native bfloat16). ``--variants`` adds other fewcore configurations, e.g. ``fp32`` (float32,
  channels-first) or ``before`` (the CPU default before issue 15: vmap over chunks of 4 tasks,
  float32, channels-first).

Before timing, each case checks that the two sides compute the same meta-gradient (the
float64, 1e-10 comparison is ``tests/plugins/test_maml.py::test_meta_gradients_equal_highers``;
here, in the timed precision, see ``Side.agrees_with``) and warms up.
Then the sides alternate, round after round, each round on the next meta-batch and in the
opposite order to the previous one, so that the drifting load of a shared machine hits both
alike. Time is the process's CPU time of a step (user + system; with one intra-op thread it is
the step's cost, without the time spent waiting for a core). Printed per side: tasks/s =
32 / CPU seconds, median and min–max over rounds; the ratio fewcore / higher is taken per
round (the two steps of a round ran back to back) and summarized the same way.

    pip install -e '.[peers]'
    python benchmarks/peers/maml.py --omniglot DATA/omniglot/images_background_small1.zip

``--threads`` (default 1), ``--rounds`` (default 5), ``--cases 2nd-1,1st-1,2nd-5,1st-5``.
Without ``--omniglot`` the generated ``glyphs`` dataset stands in (same shapes). Expect about
10 minutes for the four cases on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import higher
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore import Episode
from fewcore.engine._precision import ComputeMode
from fewcore.plugins.learners.maml import MAML

N_WAY, K_SHOT, Q_QUERY, META_BATCH, SIDE, INNER_LR = 5, 1, 15, 32, 28, 0.4
CASES = {"2nd-1": (False, 1), "1st-1": (True, 1), "2nd-5": (False, 5), "1st-5": (True, 5)}


@dataclass(frozen=True)
class Variant:
    """A fewcore configuration: learner options and the engine's compute mode."""

    task_batching: str
    tasks_per_vmap: int | None
    precision: str
    channels_last: bool | str


VARIANTS = {
    "default": Variant("auto", None, "auto", "auto"),
    "fp32": Variant("auto", None, "fp32", False),
    "fp32-channels-last": Variant("auto", None, "fp32", True),
    "before": Variant("vmap", 4, "fp32", False),
}


def higher_conv4(n_way: int = N_WAY) -> nn.Sequential:
    """Conv4 and a linear head as a higher user writes them: [conv, BN, ReLU, max-pool] × 4.

    Batch norm always uses batch statistics (``track_running_stats=False``), as MAML's reference
    implementation and fewcore's learner do.
    """
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * (SIDE // 16) ** 2, n_way))


def higher_meta_gradient(net: nn.Module, batch: Episode, steps: int, first_order: bool, inner_lr: float) -> None:
    """Accumulate the meta-gradient of the mean query loss of ``batch`` into ``net``'s ``.grad``."""
    inner_opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
    tasks = batch.support_x.shape[0]
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        with higher.innerloop_ctx(
            net, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fnet, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fnet(sx), sy))
            query_loss = F.cross_entropy(fnet(qx), qy) / tasks
            if first_order:
                # the adapted weights are detached: their gradient is the FOMAML meta-gradient
                for p, g in zip(net.parameters(), torch.autograd.grad(query_loss, list(fnet.parameters()))):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                query_loss.backward()


def fewcore_maml(steps: int, first_order: bool, variant: Variant) -> tuple[MAML, ComputeMode]:
    backbone = fewcore.create("backbone", "conv4", item_shape=(1, SIDE, SIDE))
    learner = MAML(
        backbone, n_way=N_WAY, inner_steps=steps, inner_lr=INNER_LR, first_order=first_order,
        task_batching=variant.task_batching, tasks_per_vmap=variant.tasks_per_vmap, item_shape=(1, SIDE, SIDE),
    )
    mode = ComputeMode.resolve(variant.precision, variant.channels_last, "cpu")
    return mode.prepare(learner), mode


def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the parameters of ``source`` (same architecture, parameters in the same order)."""
    with torch.no_grad():
        pairs = list(zip(source.parameters(), target.parameters(), strict=True))
        for s, t in pairs:
            if s.shape != t.shape:
                raise ValueError(f"parameter shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
            t.copy_(s)


class Side:
    """One meta-training setup: a model, its Adam meta-optimizer and a step function."""

    def __init__(self, name: str, model: nn.Module, meta_gradient: Callable[[Episode], None],
                 mode: ComputeMode | None = None) -> None:
        self.name, self.model, self._meta_gradient = name, model, meta_gradient
        self._autocast = mode.autocast if mode else contextlib.nullcontext
        self.precision = "fp32" if mode is None else mode.precision
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def agrees_with(self, reference: Tensor, got: Tensor) -> tuple[bool, str]:
        """Whether a meta-gradient is higher's float32 one up to this side's rounding.

        float32: 1e-2 of the norm (another summation order; channels-last convolutions measured
        1.4e-3). Under bfloat16 autocast the query pass rounds to 8 bits and the meta-gradient
        amplifies it (measured cosine similarity 0.998 with 2 inner steps, 0.92 with 5), so only
        its direction is checked, to a cosine of 0.8.
        """
        if self.precision == "fp32":
            error = float((got - reference).norm() / reference.norm())
            return error <= 1e-2, f"differs by {error:.1e} of its norm"
        cosine = float(F.cosine_similarity(got, reference, dim=0))
        return cosine >= 0.8, f"has a cosine similarity of {cosine:.3f}"

    def meta_gradient(self, batch: Episode) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            self._meta_gradient(batch)
        return torch.cat([p.grad.flatten() for p in self.model.parameters()])

    def step(self, batch: Episode) -> float:
        """CPU seconds of one meta-training step (meta-gradient and optimizer update)."""
        start = time.process_time()
        self.meta_gradient(batch)
        self.optimizer.step()
        return time.process_time() - start


def build_sides(first_order: bool, steps: int, variants: list[str]) -> list[Side]:
    torch.manual_seed(0)
    sides = []
    for name in variants:
        learner, mode = fewcore_maml(steps, first_order, VARIANTS[name])

        def fewcore_gradient(batch: Episode, learner: MAML = learner) -> None:
            learner(batch).loss.backward()

        sides.append(Side(f"fewcore {name}", learner, fewcore_gradient, mode))
    net = higher_conv4()
    copy_parameters(sides[0].model, net)
    for side in sides[1:]:
        copy_parameters(sides[0].model, side.model)
    sides.insert(0, Side("higher", net, lambda batch: higher_meta_gradient(net, batch, steps, first_order, INNER_LR)))
    return sides


def meta_batches(omniglot: str | None, count: int) -> list[Episode]:
    if omniglot:
        dataset = fewcore.create("dataset", "omniglot", root=omniglot, image_size=SIDE)
    else:
        dataset = fewcore.create("dataset", "glyphs", image_size=SIDE)
    sampler = fewcore.create(
        "sampler", "episodic", dataset=dataset, split="train", n_way=N_WAY, k_shot=K_SHOT, q_query=Q_QUERY,
        batch_size=META_BATCH, seed=0,
    )
    return [batch for batch, _ in zip(sampler, range(count))]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def run_case(case: str, batches: list[Episode], rounds: int, variants: list[str]) -> list[str]:
    first_order, steps = CASES[case]
    sides = build_sides(first_order, steps, variants)
    reference = sides[0].meta_gradient(batches[0])
    for side in sides[1:]:
        agrees, how = side.agrees_with(reference, side.meta_gradient(batches[0]))
        if not agrees:
            raise AssertionError(f"{case}: {side.name}'s meta-gradient {how} with higher's")
    for side in sides:  # warm-up (allocator, oneDNN primitive caches)
        side.step(batches[0])
    seconds: dict[str, list[float]] = {side.name: [] for side in sides}
    for r in range(rounds):
        batch = batches[r % len(batches)]
        for side in sides if r % 2 == 0 else sides[::-1]:
            seconds[side.name].append(side.step(batch))
    rows = []
    base = [META_BATCH / s for s in seconds["higher"]]
    order, inner = ("first" if first_order else "second"), f"{steps} inner step{'s' if steps > 1 else ''}"
    for side in sides:
        rate = [META_BATCH / s for s in seconds[side.name]]
        ratio = [r / b for r, b in zip(rate, base)]
        rows.append(f"| {order}, {inner} | {side.name} | {summary(rate)} | {summary(ratio)} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--omniglot", help="images_background_small1.zip (or any Omniglot root); default: glyphs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--variants", default="default", help=f"fewcore configurations, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    cases, variants = args.cases.split(","), args.variants.split(",")
    for name, known in [*((c, CASES) for c in cases), *((v, VARIANTS) for v in variants)]:
        if name not in known:
            parser.error(f"unknown {name!r}; expected one of {', '.join(known)}")
    torch.set_num_threads(args.threads)
    batches = meta_batches(args.omniglot, max(args.rounds, 1))
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    mode = ComputeMode.resolve("auto", "auto", "cpu")
    print(
        f"torch {torch.__version__}, higher {importlib.metadata.version('higher')}, {cpu}, {os.cpu_count()} cores, "
        f"torch.get_num_threads() = {torch.get_num_threads()}, fewcore default compute mode on this CPU: {mode}; "
        f"data: {'Omniglot ' + os.path.basename(args.omniglot) if args.omniglot else 'glyphs'}; "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the start"
    )
    print("\n| case | side | tasks/s median (min–max) | / higher median (min–max) |\n| --- | --- | --- | --- |")
    for case in cases:
        run_case(case, batches, args.rounds, variants)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
