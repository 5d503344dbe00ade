"""The ``fewcore`` subcommands that run the engine: train, eval, plot, predict, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import fewcore
from fewcore.config import load_config
from fewcore.engine._build import resolve_device
from fewcore.engine._evaluate import EvalResult
from fewcore.engine._inference import evaluate_checkpoint, load_model, predict_folder, resolve_checkpoint
from fewcore.engine._plot import plot_run
from fewcore.engine._train import TrainResult, checkpoint_paths, train


def _print_results(results: list[EvalResult], split: str, indent: str = "  ") -> None:
    print(f"test accuracy on the {split!r} classes (mean ± 95% CI):")
    for result in results:
        print(f"{indent}{result}")


def _print_training(result: TrainResult) -> None:
    if result.best_val is not None:
        print(f"best validation: step {result.best_step}, {result.best_val}")
    print(f"training: {result.steps} steps in {result.train_seconds:.1f} s ({result.episodes_per_s:.1f} episodes/s)")


def _train_config(args: argparse.Namespace) -> Any:
    overrides = list(args.overrides)
    if args.run_dir is not None:
        overrides.append(f"run.dir={json.dumps(str(args.run_dir))}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    """``fewcore train``: meta-train from a TOML config."""
    config = _train_config(args)
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; resume from the last checkpoint with: fewcore train {args.config} --resume "
            f"--run-dir {config.run.dir}",
            file=sys.stderr,
        )
        return 130
    if result.rank != 0:
        return 0  # under torchrun, rank 0 reports
    _print_training(result)
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics: {result.run_dir / 'metrics.csv'}; evaluate with: fewcore eval {result.run_dir}")
    return 0


def _eval_json(results: list[EvalResult], checkpoint: Path) -> dict[str, Any]:
    return {
        "checkpoint": str(checkpoint),
        "results": [
            {
                "setting": r.setting,
                "n_way": r.n_way,
                "k_shot": r.k_shot,
                "episodes": r.episodes,
                "accuracy": r.accuracy,
                "ci95": r.ci95,
                "loss": r.loss,
            }
            for r in results
        ],
    }


def _run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding ``checkpoint`` (``RUN/checkpoints/x.pt``), if it is in one."""
    run_dir = checkpoint.resolve().parent.parent
    return run_dir if (run_dir / "config.json").is_file() else None


def cmd_eval(args: argparse.Namespace) -> int:
    """``fewcore eval``: test accuracy of a checkpoint, written to ``RUN/eval.json``."""
    checkpoint = resolve_checkpoint(args.checkpoint)
    results, config = evaluate_checkpoint(checkpoint, args.overrides, args.device or "auto", progress=not args.no_progress)
    report = _eval_json(results, checkpoint)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {checkpoint}")
        _print_results(results, config.eval.split)
    output = args.output or (run_dir / "eval.json" if (run_dir := _run_dir_of(checkpoint)) else None)
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
        if not args.json:
            print(f"written to {output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``fewcore plot``: render a run's learning curves."""
    print(plot_run(args.run, args.output))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``fewcore predict``: classify query images given labelled support images."""
    device = resolve_device(args.device or "auto")
    model = load_model(args.checkpoint, device)
    try:
        predictions = predict_folder(
            model.learner, model.item_shape, args.support, args.query, device, args.invert,
            precision=model.config.eval.precision, channels_last=model.config.eval.channels_last,
        )
    except ValueError as exc:
        print(f"fewcore predict: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"path": str(p.path), "label": p.label, "score": p.score} for p in predictions], indent=2))
    else:
        width = max(len(str(p.path)) for p in predictions)
        for p in predictions:
            print(f"{str(p.path).ljust(width)}  {p.label}  {p.score:.3f}")
    return 0


def demo_config_path() -> Path:
    """The demo config shipped inside the package (``fewcore/configs/demo.toml``), installed or not."""
    return Path(fewcore.__file__).resolve().parent / "configs" / "demo.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    """``fewcore demo``: train, test and plot the demo config end to end."""
    path = Path(args.config) if args.config is not None else demo_config_path()
    if not path.is_file():
        raise FileNotFoundError(f"the demo config {path} is missing; pass one with --config")
    overrides = list(args.overrides)
    if args.run_dir is not None:
        overrides.append(f"run.dir={json.dumps(str(args.run_dir))}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    config = load_config(path, overrides)
    started = time.perf_counter()
    print(
        f"fewcore demo: meta-training {config.learner.name} ({config.backbone.name}) on the "
        f"{config.dataset.name!r} dataset for {config.train.steps} steps of "
        f"{config.train.n_way}-way {config.train.k_shot}-shot episodes; run directory {config.run.dir}"
    )
    # Resuming makes the demo restartable: an interrupted run continues, a finished one is reused.
    resume = checkpoint_paths(config.run.dir)[0].exists()
    if resume:
        print(f"continuing the run in {config.run.dir} (delete it to start over)")
    result = train(config, resume=resume, progress=not args.no_progress)
    _print_training(result)
    results, _ = evaluate_checkpoint(result.best_checkpoint, (), config.train.device, progress=not args.no_progress)
    (result.run_dir / "eval.json").write_text(json.dumps(_eval_json(results, result.best_checkpoint), indent=2) + "\n")
    _print_results(results, config.eval.split)
    plot = plot_run(result.run_dir)
    print(f"checkpoint: {result.best_checkpoint}")
    print(f"learning curves: {plot}")
    print(f"metrics: {result.run_dir / 'metrics.csv'}")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0
