"""``fewcore zsl CONFIG``: fit a zero-shot model on the seen classes, print ZSL and GZSL accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fewcore.zeroshot import load_zero_shot_config, run_zero_shot


def add_commands(commands: Any) -> argparse.ArgumentParser:
    """Add the ``zsl`` command to the ``fewcore`` subparsers ``commands``; returns its parser
    (to which the caller adds the options every config command shares, such as ``--set``)."""
    zsl = commands.add_parser(
        "zsl", help="zero-shot: fit on seen classes, report ZSL and GZSL accuracy (Xian et al. 2018) with 95%% intervals"
    )
    zsl.add_argument("config", type=Path, help="a zero-shot TOML config (see configs/zsl/)")
    zsl.add_argument("--json", action="store_true", help="machine-readable output")
    zsl.set_defaults(func=cmd_zsl)
    return zsl


def cmd_zsl(args: argparse.Namespace) -> int:
    """Run the zero-shot protocol of a config and print its metrics."""
    config = load_zero_shot_config(args.config, args.overrides)
    report = run_zero_shot(config)
    if args.json:
        print(json.dumps({"config": str(args.config), **report.as_dict()}, indent=2))
        return 0
    print(f"{config['dataset']['name']} · {config['model']['name']}  (mean per-class top-1, 95% bootstrap interval)")
    print(f"ZSL   unseen classes only     {report.zsl}")
    print(f"GZSL  seen                    {report.seen}")
    print(f"GZSL  unseen                  {report.unseen}")
    print(f"GZSL  harmonic mean H         {report.harmonic}")
    return 0
