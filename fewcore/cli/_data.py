"""``fewcore data check NAME ROOT``: does a local copy of a benchmark hold what its paper says?

A dataset takes part by offering, on its registered class, ``expected_counts`` (split → the
published ``(classes, images)``, images ``None`` where no figure is published) and a class
method ``survey(root)`` returning split → class → images found, without decoding any image.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class SplitCheck:
    """Found against published counts for one split."""

    split: str
    classes: int
    expected_classes: int
    images: int
    expected_images: int | None
    empty_classes: list[str]

    @property
    def matches(self) -> bool:
        """The counts are the published ones (images where a figure is published)."""
        return self.classes == self.expected_classes and self.expected_images in (None, self.images)


def cmd_data_check(args: argparse.Namespace) -> int:
    """Print found against expected classes and images per split; exit status 1 on a mismatch."""
    dataset = _surveyable(args.name)
    try:
        found = dataset.survey(args.root)
    except ValueError as exc:  # a malformed index file: the user's data, not a bug
        print(f"fewcore data check: error: {exc}", file=sys.stderr)
        return 2
    checks = []
    for split, (classes, images) in dataset.expected_counts.items():
        counts = found.get(split, {})
        empty = sorted(name for name, n in counts.items() if n == 0)
        checks.append(SplitCheck(split, len(counts), classes, sum(counts.values()), images, empty))
    ok = all(check.matches and not check.empty_classes for check in checks)
    if args.json:
        report = {"dataset": args.name, "root": str(args.root), "ok": ok, "splits": [asdict(c) for c in checks]}
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    print(f"{args.name} at {args.root}")
    print(f"{'split':<6} {'classes':>8} {'expected':>9} {'images':>10} {'expected':>10}")
    for check in checks:
        expected_images = "-" if check.expected_images is None else f"{check.expected_images:,}"
        print(
            f"{check.split:<6} {check.classes:>8} {check.expected_classes:>9} {check.images:>10,} "
            f"{expected_images:>10}{'' if check.matches else '  <- differs'}"
        )
        if check.empty_classes:
            print(f"       {len(check.empty_classes)} classes without images, e.g. {check.empty_classes[:3]}")
    print("matches the published counts" if ok else "does not match the published counts")
    return 0 if ok else 1
