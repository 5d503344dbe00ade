"""The metrics of Xian et al. (2018), "Zero-Shot Learning — A Comprehensive Evaluation of the Good,
the Bad and the Ugly", with bootstrap 95% intervals.

- ZSL: test items of the unseen classes are classified among the unseen classes only; the score is
  the mean per-class top-1 accuracy ``acc = (1/|Y|) Σ_c (#correct in c / #items in c)``, so large
  classes do not dominate.
- GZSL: test items of seen and unseen classes are classified among all classes; ``acc_s`` and
  ``acc_u`` are the mean per-class accuracies on the seen and the unseen test items, and
  ``H = 2 · acc_s · acc_u / (acc_s + acc_u)`` their harmonic mean, high only when both are.

Each interval is the 2.5th–97.5th percentile of the metric over bootstrap resamples of the test
items, drawn within each class (so every class keeps its size); H's interval comes from the same
resamples as acc_s and acc_u.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """A metric with its 95% bootstrap interval, all in [0, 1]."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{100 * self.value:.2f}% [{100 * self.low:.2f}, {100 * self.high:.2f}]"


@dataclass(frozen=True)
class ZeroShotReport:
    """ZSL accuracy and the GZSL seen/unseen accuracies and harmonic mean."""

    zsl: Estimate
    seen: Estimate
    unseen: Estimate
    harmonic: Estimate

    def as_dict(self) -> dict[str, dict[str, float]]:
        """metric → ``{"value", "low", "high"}``, for JSON."""
        return {name: vars(getattr(self, name)) for name in ("zsl", "seen", "unseen", "harmonic")}


def per_class_accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Mean over the classes present in ``labels`` of each class's top-1 accuracy.

    Args:
        predictions: ``[n]`` predicted classes.
        labels: ``[n]`` true classes.
    """
    if predictions.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"predictions and labels must be equal, non-empty [n]; got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    classes, index = labels.unique(return_inverse=True)
    correct = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, index, (predictions == labels).double())
    counts = torch.bincount(index, minlength=len(classes)).double()
    return float((correct / counts).mean())


def harmonic_mean(seen: Tensor | float, unseen: Tensor | float) -> Tensor:
    """``2 · s · u / (s + u)``, 0 where both are 0."""
    s, u = torch.as_tensor(seen, dtype=torch.float64), torch.as_tensor(unseen, dtype=torch.float64)
    total = s + u
    return torch.where(total > 0, 2 * s * u / total.clamp_min(1e-12), torch.zeros_like(total))


def _bootstrap_class_means(correct: Tensor, labels: Tensor, resamples: int, gen: torch.Generator) -> Tensor:
    """``[resamples]`` mean per-class accuracy over resamples drawn within each class."""
    totals = torch.zeros(resamples, dtype=torch.float64)
    classes = labels.unique()
    for c in classes:
        hits = correct[labels == c].double()
        draw = torch.randint(len(hits), (resamples, len(hits)), generator=gen)
        totals += hits[draw].mean(dim=1)
    return totals / len(classes)


def _estimate(value: float, samples: Tensor) -> Estimate:
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Estimate(value, low, high)


def zero_shot_report(
    zsl_predictions: Tensor,
    unseen_labels: Tensor,
    gzsl_seen_predictions: Tensor,
    seen_labels: Tensor,
    gzsl_unseen_predictions: Tensor,
    resamples: int = 1000,
    seed: int = 0,
) -> ZeroShotReport:
    """ZSL and GZSL metrics with 95% bootstrap intervals.

    Args:
        zsl_predictions: ``[n_u]`` classes predicted for the unseen test items among unseen classes.
        unseen_labels: ``[n_u]`` their true classes.
        gzsl_seen_predictions: ``[n_s]`` classes predicted for the seen test items among all classes.
        seen_labels: ``[n_s]`` their true classes.
        gzsl_unseen_predictions: ``[n_u]`` classes predicted for the unseen test items among all classes.
        resamples: bootstrap resamples (at least 2).
        seed: the bootstrap's seed.
    """
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2; got {resamples}")
    gen = torch.Generator().manual_seed(seed)
    zsl = per_class_accuracy(zsl_predictions, unseen_labels)
    seen = per_class_accuracy(gzsl_seen_predictions, seen_labels)
    unseen = per_class_accuracy(gzsl_unseen_predictions, unseen_labels)
    zsl_samples = _bootstrap_class_means(zsl_predictions == unseen_labels, unseen_labels, resamples, gen)
    seen_samples = _bootstrap_class_means(gzsl_seen_predictions == seen_labels, seen_labels, resamples, gen)
    unseen_samples = _bootstrap_class_means(gzsl_unseen_predictions == unseen_labels, unseen_labels, resamples, gen)
    return ZeroShotReport(
        zsl=_estimate(zsl, zsl_samples),
        seen=_estimate(seen, seen_samples),
        unseen=_estimate(unseen, unseen_samples),
        harmonic=_estimate(float(harmonic_mean(seen, unseen)), harmonic_mean(seen_samples, unseen_samples)),
    )
