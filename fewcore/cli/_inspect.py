"""The ``fewcore`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from typing import Sequence

import torch

import fewcore
from fewcore import _extension
from fewcore.engine._cli import add_engine_commands


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cmd_plugins(args: argparse.Namespace) -> int:
    components = fewcore.registry().components()
    records = [
        {
            "kind": c.kind,
            "name": c.name,
            "plugin": c.plugin.name,
            "distribution": c.plugin.distribution,
            "version": c.plugin.version,
        }
        for c in components
    ]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        header = ["kind", "name", "plugin", "distribution", "version"]
        print(_table([[r[h] for h in header] for r in records], header))
    return 0


def info() -> dict[str, object]:
    """Versions, the active op implementation, the compiled kernels and the visible devices."""
    build = _extension.build_info()
    error = _extension.load_error()
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {
        "fewcore": fewcore.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ops": _extension.active_implementation(),
        "extension_loaded": error is None,
        "extension_error": None if error is None else f"{type(error).__name__}: {error}",
        "built_for_torch": build.get("torch"),
        "cuda_kernels": bool(build.get("with_cuda")),
        "cuda_arch_list": build.get("cuda_arch_list") or None,
        "cpu_threads": torch.get_num_threads(),
        "devices": devices,
    }


def _cmd_info(args: argparse.Namespace) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        width = max(len(k) for k in data)
        for key, value in data.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key.ljust(width)}  {shown}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from fewcore.ops import check_ops

    results = check_ops(args.device or None)
    if args.json:
        print(json.dumps([{**dataclasses.asdict(r), "passed": r.passed} for r in results], indent=2))
    else:
        header = ["op", "metric", "device", "dtype", "shape", "forward err", "backward err", "result"]
        rows = [
            [r.op, r.metric, r.device, r.dtype, r.shape, f"{r.forward_error:.1e}", f"{r.backward_error:.1e}",
             "pass" if r.passed else f"FAIL{': ' + r.error if r.error else ''}"]
            for r in results
        ]
        print(_table(rows, header))
        failed = sum(not r.passed for r in results)
        print(f"\n{len(results) - failed}/{len(results)} passed (errors relative to max(1, |reference|))")
    return 0 if all(r.passed for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewcore", description="Few-shot learning with fused kernels and plugins.")
    parser.add_argument("--version", action="version", version=f"fewcore {fewcore.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list every registered component")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    info_cmd = commands.add_parser("info", help="versions, active ops, compiled kernels, devices")
    info_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    info_cmd.set_defaults(func=_cmd_info)

    check = commands.add_parser("check", help="compare every compiled op with its reference on every device")
    check.add_argument("--device", action="append", help="check only this device (repeatable; default: all)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_cmd_check)

    add_engine_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (fewcore.PluginLoadError, fewcore.RegistryError, _extension.ExtensionNotAvailable) as exc:
        print(f"fewcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
