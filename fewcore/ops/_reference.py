"""Pure-PyTorch reference implementations of fewcore's ops.

They define what the compiled kernels must compute: the tests compare the kernels against them
(in float64), ``fewcore check`` does the same on every device, and ``FEWCORE_OPS=reference``
runs them instead of the kernels. They favour clarity and exactness over speed: squared distances
are summed from the differences (never ``‖x‖² + ‖y‖² − 2x·y``, which cancels for near-duplicate
points), so memory grows as ``B·N·M·D``.
"""

from __future__ import annotations

import torch

#: the metrics accepted by ``pairwise_distance`` and ``episode_attention``, in the kernels' order
METRICS = ("sqeuclidean", "euclidean", "cosine", "dot")
#: a vector whose norm is below this is treated as having this norm (cosine of a zero vector is 0)
COSINE_EPS = 1e-8


def _safe_sqrt(squared: torch.Tensor) -> torch.Tensor:
    """``sqrt`` whose gradient at 0 is 0 rather than NaN (the subgradient a distance wants)."""
    zero = squared == 0  # NaN is not zero, so it propagates
    return torch.where(zero, 0.0, torch.where(zero, 1.0, squared).sqrt())


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean") -> torch.Tensor:
    """Reference for :func:`fewcore.ops.pairwise_distance` (same arguments and result).

    Args:
        x: ``[B, N, D]`` or ``[N, D]``.
        y: ``[B, M, D]`` or ``[M, D]``.
        metric: one of :data:`METRICS`; ``cosine`` is the cosine *similarity*.

    Returns:
        ``[B, N, M]`` (``[N, M]`` when both inputs are 2-D), in the inputs' dtype.
    """
    if metric in ("sqeuclidean", "euclidean"):
        diff = x.unsqueeze(-2) - y.unsqueeze(-3)
        squared = diff.square().sum(-1)
        return squared if metric == "sqeuclidean" else _safe_sqrt(squared)
    if metric == "cosine":
        x_unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        y_unit = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        return x_unit @ y_unit.transpose(-1, -2)
    if metric == "dot":
        return x @ y.transpose(-1, -2)
    raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")


def similarity(q: torch.Tensor, s: torch.Tensor, metric: str) -> torch.Tensor:
    """The attention score before the temperature: cosine or dot similarity, or a negated distance.

    Args:
        q: ``[B, N, D]``.
        s: ``[B, M, D]``.
        metric: one of :data:`METRICS`.

    Returns:
        ``[B, N, M]``.
    """
    value = pairwise_distance(q, s, metric)
    return value if metric in ("cosine", "dot") else -value


def episode_attention(
    q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: str = "cosine", temperature: float = 1.0
) -> torch.Tensor:
    """Reference for :func:`fewcore.ops.episode_attention`: ``softmax(sim(q, s) / T) @ v``.

    Args:
        q: queries ``[B, N, D]`` or ``[N, D]``.
        s: support ``[B, M, D]`` or ``[M, D]``.
        v: support values ``[B, M, C]`` or ``[M, C]`` (one-hot labels for Matching Networks).
        metric: one of :data:`METRICS`.
        temperature: positive divisor of the scores.

    Returns:
        ``[B, N, C]`` (``[N, C]`` when all inputs are 2-D).
    """
    scores = similarity(q, s, metric) / temperature
    return torch.softmax(scores, dim=-1) @ v
