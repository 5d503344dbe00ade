"""Autograd wiring of the compiled kernels.  TEMPORARY: delegates to the reference until the kernels land."""

from __future__ import annotations

import torch

from fewcore.ops import _reference
from fewcore.ops._reference import METRICS


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: int, batched: bool) -> torch.Tensor:
    return _reference.pairwise_distance(x, y, METRICS[metric])


def episode_attention(
    q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: int, temperature: float, batched: bool
) -> torch.Tensor:
    return _reference.episode_attention(q, s, v, METRICS[metric], temperature)
