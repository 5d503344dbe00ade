"""``fewcore data check NAME ROOT``: does a local copy of a benchmark hold what its paper says?

A dataset takes part by offering, on its registered class, ``expected_counts`` (split → the
published ``(classes, images)``, images ``None`` where no figure is published) and a class
method ``survey(root)`` returning split → class → images found, without decoding any image.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping, Protocol, runtime_checkable

import fewcore


@runtime_checkable
class Surveyable(Protocol):
    """A dataset class that can count a local copy and knows the published counts."""

    expected_counts: Mapping[str, tuple[int, int | None]]

    def survey(self, root: str) -> Mapping[str, Mapping[str, int]]:
        """split → class → number of images found under ``root``."""
        ...


def add_commands(commands: Any) -> None:
    """Add the ``data`` command group to the ``fewcore`` subparsers ``commands``."""
    data = commands.add_parser("data", help="inspect local copies of benchmark datasets")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="count the classes and images per split of a local copy against the published counts"
    )
    check.add_argument("name", help="a registered dataset with published counts (e.g. miniimagenet, cub)")
    check.add_argument("root", help="the dataset's folder, as its root option takes it")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_data_check)


def _surveyable(name: str) -> Surveyable:
    factory = fewcore.registry().get("dataset", name).factory
    if not isinstance(factory, Surveyable):
        able = [n for n in fewcore.list_components("dataset") if isinstance(fewcore.registry().get("dataset", n).factory, Surveyable)]
        raise fewcore.RegistryError(
            f"dataset {name!r} has no published counts to check against; `fewcore data check` knows: {', '.join(able)}"
        )
    return factory


def cmd_data_check(args: argparse.Namespace) -> int:
    """Print found against expected classes and images per split; exit status 1 on a mismatch."""
    dataset = _surveyable(args.name)
    try:
        found = dataset.survey(args.root)
    except ValueError as exc:  # a malformed index file: the user's data, not a bug
        print(f"fewcore data check: error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for split, (classes, images) in dataset.expected_counts.items():
        counts = found.get(split, {})
        rows.append(
            {
                "split": split,
                "classes": len(counts),
                "expected_classes": classes,
                "images": sum(counts.values()),
                "expected_images": images,
                "empty_classes": sorted(name for name, n in counts.items() if n == 0),
            }
        )
    ok = all(
        r["classes"] == r["expected_classes"]
        and r["expected_images"] in (None, r["images"])
        and not r["empty_classes"]
        for r in rows
    )
    if args.json:
        print(json.dumps({"dataset": args.name, "root": str(args.root), "ok": ok, "splits": rows}, indent=2))
        return 0 if ok else 1
    print(f"{args.name} at {args.root}")
    print(f"{'split':<6} {'classes':>8} {'expected':>9} {'images':>10} {'expected':>10}")
    for r in rows:
        expected_images = "-" if r["expected_images"] is None else f"{r['expected_images']:,}"
        mark = "" if r["classes"] == r["expected_classes"] and r["expected_images"] in (None, r["images"]) else "  <- differs"
        print(
            f"{r['split']:<6} {r['classes']:>8} {r['expected_classes']:>9} {r['images']:>10,} {expected_images:>10}{mark}"
        )
        if r["empty_classes"]:
            print(f"       {len(r['empty_classes'])} classes without images, e.g. {r['empty_classes'][:3]}")
    print("matches the published counts" if ok else "does not match the published counts")
    return 0 if ok else 1
