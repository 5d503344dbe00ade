"""Accuracy, confidence intervals, and the run's metrics log (JSONL and CSV)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

#: columns of metrics.csv; a record leaves the ones it does not have empty
CSV_FIELDS = ("step", "phase", "loss", "accuracy", "ci95", "episodes", "episodes_per_s", "lr", "elapsed_s")


def episode_accuracy(logits: Tensor, query_y: Tensor) -> Tensor:
    """Per-episode accuracy.

    Args:
        logits: ``[B, Nq, N]`` class scores.
        query_y: ``[B, Nq]`` labels in ``0..N-1``.

    Returns:
        ``[B]`` float accuracies in [0, 1].
    """
    if logits.shape[:2] != query_y.shape:
        raise ValueError(
            f"logits [B, Nq, N] and query labels [B, Nq] disagree: {tuple(logits.shape)} vs {tuple(query_y.shape)}"
        )
    return (logits.argmax(dim=-1) == query_y).float().mean(dim=1)


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 · σ / √n`` (σ: sample standard deviation, n-1).

    One value gives a half-width of 0 (there is no spread to estimate).
    """
    data = torch.tensor(list(values), dtype=torch.float64)
    if data.numel() == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if data.numel() == 1:
        return float(data[0]), 0.0
    return float(data.mean()), float(1.96 * data.std(unbiased=True) / math.sqrt(data.numel()))


class MetricsLog:
    """Append-only records in ``metrics.jsonl`` (every field) and ``metrics.csv`` (:data:`CSV_FIELDS`).

    Args:
        run_dir: the run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (needs ``step`` and ``phase``)."""
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        new_csv = not self.csv.exists()
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new_csv:
                writer.writeheader()
            writer.writerow(record)

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first; an empty list when nothing was logged."""
        if not self.jsonl.exists():
            return []
        with open(self.jsonl) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate(self, step: int) -> None:
        """Drop the records after ``step``: a resumed run logs those steps again."""
        kept = [r for r in self.read() if r["step"] <= step]
        for path in (self.jsonl, self.csv):
            path.unlink(missing_ok=True)
        for record in kept:
            self.write(record)


class LogWindow:
    """Sums over the training steps since the last log line.

    Its state goes into resumable checkpoints, so that the first line logged after a resume
    averages the same steps as in a run that never stopped.
    """

    def __init__(self) -> None:
        self.steps = self.episodes = 0
        self.loss = self.correct = self.seconds = 0.0

    def add(self, loss: float, accuracies: Tensor, seconds: float) -> None:
        """Add one step: its loss, its ``[B]`` episode accuracies and its wall time."""
        self.steps += 1
        self.episodes += accuracies.numel()
        self.loss += loss
        self.correct += float(accuracies.sum())
        self.seconds += seconds

    def state_dict(self) -> dict[str, Any]:
        """The sums, as checkpoint-safe data."""
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sums of :meth:`state_dict`."""
        vars(self).update(state)
