"""Prototypical Networks training throughput: fewcore against easyfsl 1.5.0 (issue 15).

The task: 5-way 5-shot 15-query episodes of 28×28 Omniglot characters (images_background_small1),
Conv4 (four 64-channel [3×3 conv, batch norm, ReLU, 2×2 max-pool] blocks), Adam (lr 10⁻³), one
episode per step, one process, one thread. Two comparisons, each a pair of sides:

* **As each README teaches.** fewcore: ``fewcore train`` on a config (the ``omniglot`` dataset
  from the zip, decoded once into memory and cached, the ``episodic`` sampler, default
  options), run in-process through :func:`fewcore.engine.train`. easyfsl: torchvision's
  ``ImageFolder`` over the extracted characters (``Grayscale``, ``Resize(28)``, ``ToTensor``)
  and easyfsl's ``TaskSampler`` in a ``DataLoader`` with ``episodic_collate_fn``, then
  ``process_support_set``, ``model(query)``, cross-entropy, backward, Adam step, as in easyfsl's
  README and notebooks; ``num_workers=0``, since both sides get one process and one thread.
* **Identical pre-loaded episodes.** Both sides step through the same list of episodes already
  in memory. fewcore: the registered ``protonet`` learner stepped as the engine steps it, under
  the engine's default compute mode for this device (``train.precision`` and
  ``train.channels_last`` at ``"auto"``; :mod:`fewcore.engine._precision`). easyfsl: its
  ``PrototypicalNetworks`` around the same Conv4. A third side, fewcore in float32
  channels-first (the engine before issue 15), shows what the compute mode brings.

easyfsl 1.5.0's ``TaskSampler.__init__`` calls ``Sampler.__init__(data_source=None)``; the
torch of this benchmark (2.14) has no ``Sampler.__init__`` taking that argument and raises
``TypeError``. This benchmark patches that one call (:func:`_sampler_accepting_data_source`)
while the sampler is built; nothing else of easyfsl is changed.

Time is the process's CPU time (user + system; with one thread it is the work done, not the
time spent waiting for a core on a shared machine), after ``--warmup`` steps. A first, untimed
round runs every side once (the first bfloat16 and channels-last calls of a process create
their oneDNN kernels). Each round runs every side for ``--steps`` episodes, sides in a rotating
order; a ratio is taken per round (its sides ran back to back) and summarized as median
(min–max) over rounds.

    pip install -e '.[peers]'         # easyfsl, higher, torchvision
    FEWCORE_DATA=DATA python benchmarks/peers/protonet.py

``--omniglot`` (default ``$FEWCORE_DATA/omniglot``): ``images_background_small1.zip`` or the folder
holding it. ``--modes`` adds fewcore learner sides in other compute modes (each compared with
float32 channels-first), e.g. ``--modes fp32:channels-last,bf16:channels-first``.
``--rounds`` (default 5), ``--steps`` (default 30), ``--threads`` (default 1).
About 6 minutes of CPU time on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import torch.utils.data
from easyfsl.methods import PrototypicalNetworks as EasyPrototypicalNetworks
from easyfsl.samplers import TaskSampler
from torch import nn
from torchvision import datasets, transforms

import fewcore
from fewcore import Episode
from fewcore.config import ComponentConfig, Config
from fewcore.engine import train
from fewcore.engine._build import build_dataset, build_sampler
from fewcore.engine._precision import ComputeMode

N_WAY, K_SHOT, Q_QUERY, IMAGE_SIZE, LR = 5, 5, 15, 28, 1e-3
ZIP_NAME = "images_background_small1.zip"


def omniglot_zip(location: str | None) -> Path:
    """``images_background_small1.zip`` from ``--omniglot`` or ``$FEWCORE_DATA/omniglot`` (the zip or its folder)."""
    if not location:
        raise SystemExit(f"give the Omniglot data with --omniglot or FEWCORE_DATA (its omniglot/ subfolder): {ZIP_NAME} or its folder")
    path = Path(location)
    path = path / ZIP_NAME if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; expected {ZIP_NAME} or the folder holding it")
    return path


def easyfsl_conv4() -> nn.Sequential:
    """Conv4 written out with torch.nn, as an easyfsl user supplies a backbone (the same layers as fewcore's)."""
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten())


@contextlib.contextmanager
def _sampler_accepting_data_source() -> Iterator[None]:
    """Let ``Sampler.__init__`` take the ``data_source`` that easyfsl 1.5.0 passes (torch 2.14 refuses it)."""
    sampler = torch.utils.data.Sampler
    had_own = "__init__" in vars(sampler)
    original = sampler.__init__

    def accepting(self: torch.utils.data.Sampler, data_source: object = None) -> None:
        if had_own:
            original(self)

    sampler.__init__ = accepting  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had_own:
            sampler.__init__ = original  # type: ignore[method-assign]
        else:
            del sampler.__init__


def image_folder(archive: Path, into: Path) -> datasets.ImageFolder:
    """The characters of ``archive`` as an ``ImageFolder`` (one class folder per alphabet/character)."""
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(into / "extracted")
    classes = into / "classes"
    classes.mkdir()
    for character in sorted((into / "extracted").glob("*/*/*")):
        if character.is_dir():
            (classes / f"{character.parent.name}__{character.name}").symlink_to(character.resolve())
    transform = transforms.Compose(
        [transforms.Grayscale(1), transforms.Resize([IMAGE_SIZE, IMAGE_SIZE]), transforms.ToTensor()]
    )
    return datasets.ImageFolder(str(classes), transform=transform)


def easyfsl_loader(folder: datasets.ImageFolder, episodes: int) -> torch.utils.data.DataLoader:
    """easyfsl's README pipeline: ``TaskSampler`` over the ``ImageFolder``, episodes collated by it."""
    folder.get_labels = lambda: folder.targets  # what TaskSampler reads, as easyfsl's notebooks set it
    with _sampler_accepting_data_source():
        sampler = TaskSampler(folder, n_way=N_WAY, n_shot=K_SHOT, n_query=Q_QUERY, n_tasks=episodes)
    return torch.utils.data.DataLoader(
        folder, batch_sampler=sampler, num_workers=0, collate_fn=sampler.episodic_collate_fn
    )


class EasyfslSide:
    """easyfsl's Prototypical Networks and its training step."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = EasyPrototypicalNetworks(easyfsl_conv4())
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)

    def step(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.model.process_support_set(support_x, support_y)
        loss = F.cross_entropy(self.model(query_x), query_y)
        loss.backward()
        self.optimizer.step()


class FewcoreLearnerSide:
    """fewcore's ``protonet`` learner stepped as the engine steps it, in ``compute``'s mode."""

    def __init__(self, compute: ComputeMode) -> None:
        torch.manual_seed(0)
        backbone = fewcore.create("backbone", "conv4", in_channels=1, item_shape=(1, IMAGE_SIZE, IMAGE_SIZE))
        self.learner = fewcore.create("learner", "protonet", backbone=backbone, item_shape=(1, IMAGE_SIZE, IMAGE_SIZE))
        self.learner.train()
        self.compute = compute
        compute.prepare(self.learner)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=LR)
        self.scaler = compute.grad_scaler()

    def step(self, episode: Episode) -> None:
        with self.compute.autocast():
            output = self.learner(episode)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(output.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def fewcore_config(archive: Path, run_dir: Path, steps: int) -> Config:
    """The ``fewcore train`` config of the task (no validation; one checkpoint, at the end)."""
    return Config.from_dict(
        {
            "dataset": {"name": "omniglot", "root": str(archive), "image_size": IMAGE_SIZE, "test_fraction": 0.1},
            "backbone": {"name": "conv4", "in_channels": 1},
            "learner": {"name": "protonet"},
            "train": {
                "steps": steps, "n_way": N_WAY, "k_shot": K_SHOT, "q_query": Q_QUERY, "lr": LR,
                "log_every": steps, "checkpoint_every": steps, "device": "cpu",
            },
            "val": {"every": 0},
            "eval": {"settings": ["5-way 5-shot"]},
            "run": {"dir": str(run_dir)},
        }
    )


def cpu_seconds_after_warmup(run: Callable[[Callable[[], None]], None], warmup: int) -> tuple[float, int]:
    """Run ``run(tick)``, where ``tick()`` is called after each step; the CPU seconds taken by the
    steps after the first ``warmup`` (which also leave out ``fewcore train``'s start-up), and
    their number."""
    marks = [time.process_time()]

    def tick() -> None:
        marks.append(time.process_time())

    run(tick)
    steps = len(marks) - 1 - warmup
    if steps < 1:
        raise RuntimeError(f"{len(marks) - 1} steps ran; more than --warmup {warmup} are needed")
    return marks[-1] - marks[warmup], steps


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = os.environ.get("FEWCORE_DATA")
    parser.add_argument("--omniglot", default=str(Path(data) / "omniglot") if data else None, help=f"{ZIP_NAME} or its folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="episodes per side per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every side's round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--modes", type=lambda text: text.split(","), default=[],
        help="more fewcore learner sides, e.g. fp32:channels-last,bf16:channels-first,fp16:channels-last",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the per-round episodes/s here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archive = omniglot_zip(args.omniglot)

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        folder = image_folder(archive, scratch)
        count = args.steps + args.warmup
        dataset = build_dataset(fewcore_config(archive, scratch / "unused", 1))
        sampler = iter(build_sampler(ComponentConfig("episodic"), dataset, "train", N_WAY, K_SHOT, Q_QUERY, 1, 0))
        episodes = [next(sampler) for _ in range(count)]
        easy_episodes = [(e.support_x[0], e.support_y[0], e.query_x[0], e.query_y[0]) for e in episodes]

        easy_preloaded, easy_readme = EasyfslSide(), EasyfslSide()
        default_mode = ComputeMode.resolve("auto", "auto", "cpu")
        fewcore_default = FewcoreLearnerSide(default_mode)
        fewcore_fp32 = FewcoreLearnerSide(ComputeMode.resolve("fp32", False, "cpu"))
        runs = 0

        def fewcore_train(tick: Callable[[], None]) -> None:
            nonlocal runs
            runs += 1
            train(fewcore_config(archive, scratch / f"run{runs}", count), progress=False, on_step=lambda *_: tick())

        def easyfsl_readme(tick: Callable[[], None]) -> None:
            for support_x, support_y, query_x, query_y, _ in easyfsl_loader(folder, count):
                easy_readme.step(support_x, support_y, query_x, query_y)
                tick()

        def preloaded(step: Callable[[int], None]) -> Callable[[Callable[[], None]], None]:
            def run(tick: Callable[[], None]) -> None:
                for index in range(count):
                    step(index)
                    tick()

            return run

        sides: dict[str, Callable[[Callable[[], None]], None]] = {
            "fewcore train": fewcore_train,
            "easyfsl README (ImageFolder + TaskSampler)": easyfsl_readme,
            f"fewcore learner, pre-loaded ({default_mode})": preloaded(lambda i: fewcore_default.step(episodes[i])),
            "fewcore learner, pre-loaded (fp32, channels-first: before)": preloaded(lambda i: fewcore_fp32.step(episodes[i])),
            "easyfsl learner, pre-loaded": preloaded(lambda i: easy_preloaded.step(*easy_episodes[i])),
        }
        for text in args.modes:
            precision, _, layout = text.partition(":")
            extra = FewcoreLearnerSide(ComputeMode.resolve(precision, layout == "channels-last", "cpu"))
            sides[f"fewcore learner, pre-loaded ({extra.compute})"] = preloaded(lambda i, side=extra: side.step(episodes[i]))
        names = list(sides)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # the untimed warm-up round
            cpu_seconds_after_warmup(sides[name], args.warmup)
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[: round_index % len(names)]
            for name in order:
                seconds, steps = cpu_seconds_after_warmup(sides[name], args.warmup)
                rates[name].append(steps / seconds)
            print(f"round {round_index + 1}: " + ", ".join(f"{name}: {rates[name][-1]:.2f}" for name in names), flush=True)

    versions = {p: importlib.metadata.version(p) for p in ("torch", "easyfsl", "torchvision", "fewcore")}
    print(
        f"\n{versions}, {torch.get_num_threads()} thread(s), CPU {platform.processor() or platform.machine()}, "
        f"{args.rounds} rounds of {args.steps} episodes per side after {args.warmup} warm-up steps; CPU time"
    )
    ratios = [
        ("fewcore train", "easyfsl README (ImageFolder + TaskSampler)"),
        (names[2], "easyfsl learner, pre-loaded"),
        (names[3], "easyfsl learner, pre-loaded"),
        (names[2], names[3]),
        *[(name, names[3]) for name in names[5:]],
    ]
    print("\n| side | episodes/s median (min–max) |\n| --- | --- |")
    for name in names:
        print(f"| {name} | {summary(rates[name])} |")
    print("\n| ratio | median (min–max) over rounds |\n| --- | --- |")
    for a, b in ratios:
        print(f"| {a} / {b} | {summary([x / y for x, y in zip(rates[a], rates[b])])}× |")
    if args.json is not None:
        args.json.write_text(json.dumps({"versions": versions, "threads": torch.get_num_threads(), "rates": rates}, indent=2))


if __name__ == "__main__":
    main()
