"""The engine's ``fewcore`` subcommands: train, eval, plot, predict, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import fewcore
from fewcore.config import ConfigError, load_config
from fewcore.engine._build import BuildError, resolve_device
from fewcore.engine._checkpoint import CheckpointError
from fewcore.engine._evaluate import EvalResult
from fewcore.engine._inference import evaluate_checkpoint, load_model, predict_folder, resolve_checkpoint
from fewcore.engine._plot import plot_run
from fewcore.engine._train import ResumeError, TrainResult, checkpoint_paths, train

#: errors a user can fix, reported as one line instead of a traceback
_USER_ERRORS = (ConfigError, BuildError, CheckpointError, ResumeError, FileNotFoundError, fewcore.RegistryError)


def _reports_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _USER_ERRORS as exc:
            print(f"fewcore {args.command}: error: {exc}", file=sys.stderr)
            return 2

    return run


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.001 (repeatable)",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N")


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


@_reports_errors
def _cmd_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
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


@_reports_errors
def _cmd_eval(args: argparse.Namespace) -> int:
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


@_reports_errors
def _cmd_plot(args: argparse.Namespace) -> int:
    print(plot_run(args.run, args.output))
    return 0


@_reports_errors
def _cmd_predict(args: argparse.Namespace) -> int:
    device = resolve_device(args.device or "auto")
    model = load_model(args.checkpoint, device)
    try:
        predictions = predict_folder(model.learner, model.item_shape, args.support, args.query, device, args.invert)
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
    """``configs/demo.toml`` of the source tree fewcore runs from (``make`` installs it editable)."""
    return Path(fewcore.__file__).resolve().parent.parent / "configs" / "demo.toml"


@_reports_errors
def _cmd_demo(args: argparse.Namespace) -> int:
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


def add_engine_commands(commands: Any) -> None:
    """Add train, eval, plot, predict and demo to the ``fewcore`` subcommand parser."""
    train_cmd = commands.add_parser("train", help="meta-train from a TOML config")
    train_cmd.add_argument("config", type=Path, help="a TOML config (see configs/)")
    _add_overrides(train_cmd)
    train_cmd.add_argument("--run-dir", type=Path, default=None, help="where to write (default: run.dir of the config)")
    _add_device(train_cmd)
    train_cmd.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last checkpoint")
    train_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_cmd.set_defaults(func=_cmd_train)

    eval_cmd = commands.add_parser("eval", help="test accuracy (mean ± 95%% CI) of a checkpoint per way/shot setting")
    eval_cmd.add_argument("checkpoint", help="a checkpoint .pt or a run directory (its best.pt)")
    _add_overrides(eval_cmd)
    _add_device(eval_cmd)
    eval_cmd.add_argument("--output", type=Path, default=None, help="results JSON (default: RUN/eval.json)")
    eval_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    eval_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    eval_cmd.set_defaults(func=_cmd_eval)

    plot_cmd = commands.add_parser("plot", help="render a run's learning curves to PNG")
    plot_cmd.add_argument("run", type=Path, help="a run directory")
    plot_cmd.add_argument("--output", "-o", type=Path, default=None, help="the PNG (default: RUN/curves.png)")
    plot_cmd.set_defaults(func=_cmd_plot)

    predict_cmd = commands.add_parser("predict", help="classify query images given labelled support images")
    predict_cmd.add_argument("--support", required=True, type=Path, help="a folder with one subfolder of images per class")
    predict_cmd.add_argument("--query", required=True, type=Path, help="a folder of images (or one image)")
    predict_cmd.add_argument("--checkpoint", required=True, help="a checkpoint .pt or a run directory")
    predict_cmd.add_argument(
        "--invert", choices=("auto", "yes", "no"), default="auto",
        help="invert grayscale images (auto: when mostly bright, so dark strokes become ink)",
    )
    _add_device(predict_cmd)
    predict_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    predict_cmd.set_defaults(func=_cmd_predict)

    demo_cmd = commands.add_parser("demo", help="meta-train Prototypical Networks on the embedded glyphs, then test")
    demo_cmd.add_argument("--config", type=Path, default=None, help="default: configs/demo.toml")
    _add_overrides(demo_cmd)
    demo_cmd.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo")
    _add_device(demo_cmd)
    demo_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo_cmd.set_defaults(func=_cmd_demo)
