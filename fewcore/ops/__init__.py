"""fewcore's fused ops: batched pairwise distances and episode attention.

Both take the whole meta-batch of tasks at once (``[B, ...]``) because at episode sizes the cost
is per-call overhead, not arithmetic. ``FEWCORE_OPS=reference`` swaps in the pure-PyTorch
references (:mod:`fewcore.ops.reference`).

Conventions shared by both ops:

* a 2-D argument is one task; mixing 2-D and 3-D arguments shares the 2-D one across the batch;
* float16/bfloat16 inputs are accumulated in float32 and returned in their own dtype; under
  autocast they are computed in float32 (as autocast does for ``torch.cdist``), and so is a
  backward run inside autocast (the kernels' products exclude it);
* empty query sets (N = 0) give an empty result; empty support sets (M = 0) give an empty
  distance matrix, but are an error for ``episode_attention`` (a softmax over nothing);
* NaN and Inf propagate as in the reference: a NaN in a query row poisons that row of the result.
"""

from __future__ import annotations

import torch

from fewcore import _extension
from fewcore.ops import _reference as reference
from fewcore.ops._check import CheckResult, available_devices, check_ops
from fewcore.ops._reference import METRICS
from fewcore.ops._validation import check_batch, check_metric, check_temperature

__all__ = [
    "METRICS",
    "CheckResult",
    "available_devices",
    "check_ops",
    "episode_attention",
    "pairwise_distance",
    "reference",
]


def _autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under autocast, compute in float32 (low-precision inputs are upcast; float64 is kept)."""
    first = tensors[0]
    if isinstance(first, torch.Tensor) and first.device.type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(first.device.type):
            low = (torch.float16, torch.bfloat16)
            return tuple(t.float() if isinstance(t, torch.Tensor) and t.dtype in low else t for t in tensors)
    return tensors


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean") -> torch.Tensor:
    """Distances (or similarities) between every row of ``x`` and every row of ``y``, per task.

    Args:
        x: ``[B, N, D]`` or ``[N, D]`` (queries).
        y: ``[B, M, D]`` or ``[M, D]`` (support points or prototypes).
        metric: ``"sqeuclidean"`` (‖x−y‖², never negative), ``"euclidean"`` (‖x−y‖, gradient 0
            at distance 0), ``"cosine"`` (similarity; 0 for a zero vector) or ``"dot"``.

    Returns:
        ``[B, N, M]``, or ``[N, M]`` when both inputs are 2-D; differentiable in ``x`` and ``y``.

    Raises:
        ValueError / TypeError: naming the argument, what was expected and what was given.
    """
    code = check_metric(metric)
    x, y = _autocast(x, y)
    batched, batch = check_batch("pairwise_distance", ("x", "y"), (x, y), widths=2)
    if _extension.active_implementation() == "reference":
        return reference.pairwise_distance(x, y, metric)
    from fewcore.ops import _compiled  # raises ExtensionNotAvailable when fewcore._C did not load

    return _compiled.pairwise_distance(x, y, code, batched, batch)


def episode_attention(
    q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: str = "cosine", temperature: float = 1.0
) -> torch.Tensor:
    """Attention of each query over its task's support set: ``softmax(sim(q, s) / T) @ v``.

    With ``v`` the one-hot support labels this is the Matching Networks read-out. For large tasks
    the kernels stream over the support set (online softmax), so the ``[N, M]`` score matrix is
    never stored; episode-sized tasks on the CPU (N·M ≤ 65,536) are computed whole, and the
    forward keeps their ``[B, N, M]`` scores for the backward.

    Args:
        q: queries ``[B, N, D]`` or ``[N, D]``.
        s: support embeddings ``[B, M, D]`` or ``[M, D]``.
        v: support values ``[B, M, C]`` or ``[M, C]``.
        metric: ``"cosine"`` or ``"dot"`` similarity, or ``"sqeuclidean"`` / ``"euclidean"``
            (whose score is the negated distance).
        temperature: positive divisor of the scores.

    Returns:
        ``[B, N, C]``, or ``[N, C]`` when all inputs are 2-D; differentiable in ``q``, ``s``, ``v``.

    Raises:
        ValueError / TypeError: naming the argument, what was expected and what was given.
    """
    code = check_metric(metric)
    temperature = check_temperature(temperature)
    q, s, v = _autocast(q, s, v)
    batched, batch = check_batch("episode_attention", ("q", "s", "v"), (q, s, v), widths=2)
    if s.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"episode_attention: s and v must have one row per support item; got {s.shape[-2]} and {v.shape[-2]} rows"
        )
    if s.shape[-2] == 0:
        raise ValueError("episode_attention: the support set is empty (M = 0); a softmax over nothing is undefined")
    if _extension.active_implementation() == "reference":
        return reference.episode_attention(q, s, v, metric, temperature)
    from fewcore.ops import _compiled  # raises ExtensionNotAvailable when fewcore._C did not load

    return _compiled.episode_attention(q, s, v, code, temperature, batched, batch)
