"""What the standard benchmark datasets share: their expected sizes and the survey they answer.

Every benchmark dataset class carries ``expected_counts`` (split → :class:`Expected`) and a
``survey(root)`` class method that counts the classes and images a local copy holds per split
without decoding any image; ``fewcore data check NAME ROOT`` compares the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

#: split → class → number of images found
Census = dict[str, dict[str, int]]


class Expected(NamedTuple):
    """The published size of one split.

    Attributes:
        classes: number of classes.
        images: number of images over the split's classes, or ``None`` where the paper that
            defines the split gives no figure.
    """

    classes: int
    images: int | None


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a file; otherwise a FileNotFoundError that names it and the layout expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {path} does not exist; expected {layout}")
    return path


def read_id_table(path: Path, dataset: str) -> dict[int, str]:
    """A CUB-style index file: one ``<integer id> <value>`` pair per line → id → value.

    Raises:
        ValueError: a line is not an integer id, a space and a value, or an id repeats.
    """
    table: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{dataset}: line {number} of {path} is {line!r}; expected '<integer id> <value>'")
        key = int(fields[0])
        if key in table:
            raise ValueError(f"{dataset}: id {key} appears twice in {path} (again on line {number})")
        table[key] = fields[1].strip()
    return table
