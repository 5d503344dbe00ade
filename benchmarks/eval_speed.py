"""Evaluation speed before and after the engine's compute mode (issue 15): ``fewcore eval``'s work.

The evaluation of docs/RESULTS.md's Prototypical Networks recipe (``configs/protonet_omniglot.toml``:
Conv4 on 32×32 Omniglot, the test alphabets of images_background_small2, 5-way 1-shot, 5-way
5-shot and 20-way 1-shot with 15 queries per class) is run through
:func:`fewcore.engine.evaluate` twice per round on the same model: in float32 channels-first
(the engine before issue 15) and in the default mode of the device (``eval.precision`` and
``eval.channels_last`` at ``"auto"``). The sides alternate, round after round, in the opposite
order each round; time is the process's CPU time (one thread: the work, not the waiting), and
the ratio is taken per round and summarized as median (min–max).

    FEWCORE_DATA=DATA python benchmarks/eval_speed.py [--checkpoint RUN]

``--episodes`` per setting per round (default 100; the recipe uses 1,000, which takes 10 times
as long at the same rate), ``--rounds`` (default 3), ``--threads`` (default 1). Without
``--checkpoint`` the model is freshly initialised, which costs the same to evaluate.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fewcore.config import load_config
from fewcore.engine import evaluate, load_model
from fewcore.engine._build import build_dataset, build_learner
from fewcore.engine._precision import ComputeMode

REPO = Path(__file__).resolve().parent.parent


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = os.environ.get("FEWCORE_DATA")
    parser.add_argument("--omniglot", type=Path, default=Path(data) / "omniglot" if data else None,
                        help="the folder with images_background_small{1,2}.zip (default: $FEWCORE_DATA/omniglot)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint or run directory of the recipe")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.omniglot is None:
        raise SystemExit("give the Omniglot folder with --omniglot or FEWCORE_DATA (its omniglot/ subfolder)")
    torch.set_num_threads(args.threads)
    config = load_config(
        REPO / "configs" / "protonet_omniglot.toml",
        [
            f"dataset.train.root={json.dumps(str(args.omniglot / 'images_background_small1.zip'))}",
            f"dataset.test.root={json.dumps(str(args.omniglot / 'images_background_small2.zip'))}",
        ],
    )
    dataset = build_dataset(config)
    if args.checkpoint is not None:
        learner = load_model(args.checkpoint).learner
    else:
        torch.manual_seed(0)
        learner = build_learner(config, tuple(dataset.item_shape))
    after = ComputeMode.resolve(config.eval.precision, config.eval.channels_last, "cpu")
    sides = {"before (fp32, channels-first)": ("fp32", False), f"after (auto: {after})": ("auto", "auto")}
    models = {name: copy.deepcopy(learner) for name in sides}
    total = args.episodes * len(config.eval.settings)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    accuracies: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            precision, channels_last = sides[name]
            started = time.process_time()
            results = evaluate(
                models[name], dataset, config.eval.settings, episodes=args.episodes, q_query=config.eval.q_query,
                batch_size=config.eval.batch_size, split=config.eval.split, seed=config.eval.seed,
                sampler=config.sampler, precision=precision, channels_last=channels_last,
            )
            rates[name].append(total / (time.process_time() - started))
            accuracies[name] = [r.accuracy for r in results]
        print(f"round {round_index + 1}: " + ", ".join(f"{n}: {rates[n][-1]:.1f} episodes/s" for n in sides), flush=True)

    names = list(sides)
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.rounds} rounds of "
        f"{args.episodes} episodes x {len(config.eval.settings)} settings per side; CPU time"
    )
    print("\n| side | episodes/s median (min–max) | 1,000 episodes per setting, median |\n| --- | --- | --- |")
    for name in names:
        seconds = 1000 * len(config.eval.settings) / statistics.median(rates[name])
        print(f"| {name} | {summary(rates[name])} | {seconds / 60:.1f} min |")
    print(f"\nafter / before: {summary([a / b for a, b in zip(rates[names[1]], rates[names[0]])])}×")
    print("accuracy of the last round, per setting: " + "; ".join(
        f"{n}: " + ", ".join(f"{100 * a:.2f}" for a in accuracies[n]) for n in names))


if __name__ == "__main__":
    main()
