"""Omniglot accuracy benchmark: one command per learner, results for docs/RESULTS.md.

Protocol (issue 4): meta-train on Omniglot ``images_background_small1`` (rotation augmentation
on), validate on held-out small1 characters, and test ``best.pt`` on the alphabets of
``images_background_small2`` that small1 lacks (Japanese_(katakana), Sanskrit, Tagalog) over
1,000 episodes of each way/shot setting in the ``[eval]`` of the learner's recipe,
``configs/<learner>_omniglot.toml`` (5-way 1-shot, 5-way 5-shot and 20-way 1-shot where the
learner can classify 20 ways; learners with a fixed number of outputs, such as MAML and MANN,
list the settings they support).

A MANN is also scored as in Santoro et al. (2016): test episodes of its training shape (N ways,
K + Q items per class) are presented as sequences, and the accuracy at the 1st, 2nd, 5th and
10th presentation of a class is reported over the same number of episodes.

    python benchmarks/accuracy.py protonet            # about an hour on 2 CPU cores
    python benchmarks/accuracy.py matching
    python benchmarks/accuracy.py protonet --set train.steps=300   # a short run (label it so!)

Writes ``runs/accuracy/<learner>/results.json`` (accuracies with 95% CIs, training time,
episodes/s, versions, threads, CPU) and prints a Markdown row for docs/RESULTS.md. An
interrupted run continues where it stopped when started again with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import fewcore
from fewcore.config import load_config
from fewcore.engine import evaluate, load_model, train
from fewcore.engine._build import build_dataset, build_sampler, resolve_device
from fewcore.plugins.learners.mann import MANN
from fewcore.plugins.learners.mann_protocol import evaluate_by_instance

REPO = Path(__file__).resolve().parent.parent
#: the Omniglot subsets by default: omniglot/ of the data folder, as the configs lay it out
DEFAULT_OMNIGLOT = Path(os.environ["FEWCORE_DATA"]) / "omniglot" if os.environ.get("FEWCORE_DATA") else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("learner", help="the learner: configs/<learner>_omniglot.toml is its recipe")
    parser.add_argument(
        "--omniglot",
        type=Path,
        default=DEFAULT_OMNIGLOT,
        required=DEFAULT_OMNIGLOT is None,
        help="folder with images_background_small{1,2}.zip (default: $FEWCORE_DATA/omniglot)",
    )
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per setting (default: the config's)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/accuracy/<learner>")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config_path = REPO / "configs" / f"{args.learner}_omniglot.toml"
    run_dir = args.run_dir or REPO / "runs" / "accuracy" / args.learner
    overrides = [
        f"dataset.train.root={json.dumps(str(args.omniglot / 'images_background_small1.zip'))}",
        f"dataset.test.root={json.dumps(str(args.omniglot / 'images_background_small2.zip'))}",
        f"run.dir={json.dumps(str(run_dir))}",
        *args.overrides,
    ]
    config = load_config(config_path, overrides)

    trained = train(config, resume=args.resume)
    device = resolve_device(config.train.device)
    model = load_model(trained.best_checkpoint, device)
    dataset = build_dataset(config)
    episodes = args.episodes or config.eval.episodes
    started = time.perf_counter()
    results = evaluate(
        model.learner, dataset, config.eval.settings, episodes=episodes, q_query=config.eval.q_query,
        batch_size=config.eval.batch_size, split="test", seed=config.eval.seed, sampler=config.sampler,
        device=device, progress=True,
    )
    by_instance = []
    if isinstance(model.learner, MANN):
        sequences = build_sampler(
            config.sampler, dataset, "test", config.train.n_way, config.train.k_shot, config.train.q_query,
            config.eval.batch_size, config.eval.seed,
        )
        by_instance = evaluate_by_instance(model.learner, (e.to(device) for e in sequences), episodes, seed=config.eval.seed)
    eval_seconds = time.perf_counter() - started

    report = {
        "learner": args.learner,
        "config": str(config_path.relative_to(REPO)),
        "overrides": args.overrides,
        "steps": trained.steps,
        "episodes_per_step": config.train.batch_size,
        "train_setting": f"{config.train.n_way}-way {config.train.k_shot}-shot, {config.train.q_query} queries",
        "best_step": trained.best_step,
        "best_val": str(trained.best_val) if trained.best_val else None,
        "train_seconds": trained.train_seconds,
        "train_episodes_per_s": trained.episodes_per_s,
        "eval_seconds": eval_seconds,
        "results": {r.setting: {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes} for r in results},
        "torch": torch.__version__,
        "fewcore": fewcore.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "device": str(device),
    }
    if by_instance:
        report["by_instance"] = {
            "setting": f"{config.train.n_way}-way, {config.train.k_shot + config.train.q_query} presentations per class",
            **{str(r.position): {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes} for r in by_instance},
        }
    (run_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    for result in [*results, *by_instance]:
        print(result)
    cells = " | ".join(f"{100 * r.accuracy:.1f} ± {100 * r.ci95:.1f}" for r in [*results, *by_instance])
    print(
        f"| {args.learner} | {cells} | {trained.steps} | {trained.train_seconds / 60:.0f} min | "
        f"{trained.episodes_per_s:.1f} |"
    )
    print(f"results: {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
