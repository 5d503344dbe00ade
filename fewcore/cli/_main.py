"""The ``fewcore`` parser and entry point, and the CLI's error contract.

Error contract: a mistake a user can fix (a bad config, option, file, checkpoint or plugin)
ends with exit status 2 and one paragraph on stderr that names what was wrong and what to do;
never a traceback. ``--debug`` (or ``FEWCORE_DEBUG=1``) re-raises instead, for bug reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

import fewcore
from fewcore import _extension
from fewcore.cli import _data, _engine, _inspect, _zsl
from fewcore.config import ConfigError
from fewcore.engine._build import BuildError
from fewcore.engine._checkpoint import CheckpointError
from fewcore.engine._rundir import RunDirError
from fewcore.engine._train import DivergedError, ResumeError
from fewcore.paths import DATA_ENV, data_location

#: errors a user can fix, reported as one paragraph instead of a traceback
_USER_ERRORS = (
    ConfigError,
    BuildError,
    CheckpointError,
    ResumeError,
    RunDirError,
    DivergedError,
    FileNotFoundError,
    fewcore.PluginLoadError,
    fewcore.RegistryError,
    _extension.ExtensionNotAvailable,
)


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads of torch's operators (default: torch's choice, OMP_NUM_THREADS or the number of cores)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fewcore`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fewcore", description="Few-shot learning with fused kernels and plugins.")
    parser.add_argument("--version", action="version", version=f"fewcore {fewcore.__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: FEWCORE_DEBUG=1)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the folder relative data paths of a config are looked up in first (default: ${DATA_ENV})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list every registered component")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_inspect.cmd_plugins)

    info_cmd = commands.add_parser("info", help="versions, active ops, compiled kernels, devices")
    info_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    info_cmd.set_defaults(func=_inspect.cmd_info)

    check = commands.add_parser("check", help="compare every compiled op with its reference on every device")
    check.add_argument("--device", action="append", help="check only this device (repeatable; default: all)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_inspect.cmd_check)

    train_cmd = commands.add_parser("train", help="meta-train from a TOML config")
    train_cmd.add_argument("config", type=Path, help="a TOML config (see configs/)")
    _add_overrides(train_cmd)
    train_cmd.add_argument("--run-dir", type=Path, default=None, help="where to write (default: run.dir of the config)")
    _add_device(train_cmd)
    _add_threads(train_cmd)
    train_cmd.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last checkpoint")
    train_cmd.add_argument(
        "--overwrite", action="store_true", help="start over: delete the run directory's finished or stopped run first"
    )
    train_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_cmd.set_defaults(func=_engine.cmd_train)

    eval_cmd = commands.add_parser("eval", help="test accuracy (mean ± 95%% CI) of a checkpoint per way/shot setting")
    eval_cmd.add_argument("checkpoint", help="a checkpoint .pt or a run directory (its best.pt)")
    _add_overrides(eval_cmd)
    _add_device(eval_cmd)
    _add_threads(eval_cmd)
    eval_cmd.add_argument("--output", type=Path, default=None, help="results JSON (default: RUN/eval.json)")
    eval_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    eval_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    eval_cmd.set_defaults(func=_engine.cmd_eval)

    plot_cmd = commands.add_parser("plot", help="render a run's learning curves to PNG")
    plot_cmd.add_argument("run", type=Path, help="a run directory")
    plot_cmd.add_argument("--output", "-o", type=Path, default=None, help="the PNG (default: RUN/curves.png)")
    plot_cmd.set_defaults(func=_engine.cmd_plot)

    predict_cmd = commands.add_parser("predict", help="classify query images given labelled support images")
    predict_cmd.add_argument("--support", required=True, type=Path, help="a folder with one subfolder of images per class")
    predict_cmd.add_argument("--query", required=True, type=Path, help="a folder of images (or one image)")
    predict_cmd.add_argument("--checkpoint", required=True, help="a checkpoint .pt or a run directory")
    predict_cmd.add_argument(
        "--invert", choices=("auto", "yes", "no"), default="auto",
        help="invert grayscale images (auto: when mostly bright, so dark strokes become ink)",
    )
    _add_device(predict_cmd)
    _add_threads(predict_cmd)
    predict_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    predict_cmd.set_defaults(func=_engine.cmd_predict)

    demo_cmd = commands.add_parser("demo", help="meta-train Prototypical Networks on the embedded glyphs, then test")
    demo_cmd.add_argument("--config", type=Path, default=None, help="default: the demo config shipped with fewcore")
    _add_overrides(demo_cmd)
    demo_cmd.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo")
    _add_device(demo_cmd)
    demo_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo_cmd.set_defaults(func=_engine.cmd_demo)
    _data.add_commands(commands)
    _add_overrides(_zsl.add_commands(commands))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fewcore`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        _extension.active_implementation()
    except ValueError as exc:  # read by every command that touches an op, so checked once up front
        print(f"fewcore: error: {exc} (from the environment); unset it, or set it to reference", file=sys.stderr)
        return 2
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        # A config's relative data paths are looked up under --data-dir, then beside the config.
        config = getattr(args, "config", None)
        with data_location(args.data_dir, config.parent if config is not None else None):
            return int(args.func(args))
    except _USER_ERRORS as exc:
        if args.debug or os.environ.get("FEWCORE_DEBUG", "") not in ("", "0"):
            raise
        print(f"fewcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfewcore {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fewcore plugins | head`). Point stdout at /dev/null so the flush at
        # exit does not fail again, and exit with 1, as Python's documentation on SIGPIPE advises.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
