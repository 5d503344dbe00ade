"""The ``fewcore`` subcommands that inspect the installation: plugins, info, check."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform

import torch

import fewcore
from fewcore import _extension


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    """``fewcore plugins``: every registered component and the distribution it comes from."""
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


def cmd_info(args: argparse.Namespace) -> int:
    """``fewcore info``: the report of :func:`info`."""
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        width = max(len(k) for k in data)
        for key, value in data.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key.ljust(width)}  {shown}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``fewcore check``: every compiled op against its reference; exit status 1 on any failure."""
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
