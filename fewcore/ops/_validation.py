"""Argument checks shared by the compiled and the reference ops: one message format everywhere."""

from __future__ import annotations

import math

import torch

from fewcore.ops._reference import METRICS

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_metric(metric: str) -> int:
    """The kernels' integer code for ``metric`` (its index in :data:`METRICS`)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    return METRICS.index(metric)


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, which must be finite and positive."""
    if isinstance(temperature, torch.Tensor) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python float; got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0; got {temperature}")
    return float(temperature)


def check_batch(op: str, named: dict[str, torch.Tensor], width_groups: list[tuple[str, ...]]) -> tuple[bool, int]:
    """Validate rank, dtype, device, batch size and shared widths of an op's tensor arguments.

    Args:
        op: the op's name, for messages.
        named: argument name → tensor, each ``[B, rows, width]`` or ``[rows, width]``.
        width_groups: names whose last dimension must agree (e.g. ``("x", "y")``).

    Returns:
        ``(batched, B)``: whether any argument is 3-D (the result then is too) and the batch size
        (1 when none is batched).
    """
    first_name, first = next(iter(named.items()))
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(tensor).__name__}")
        if tensor.dim() not in (2, 3):
            raise ValueError(
                f"{op}: {name} must be [B, rows, features] or [rows, features]; got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype not in _FLOATING:
            raise TypeError(
                f"{op}: {name} must be float16, bfloat16, float32 or float64; got {tensor.dtype}"
            )
        if tensor.dtype != first.dtype:
            raise TypeError(f"{op}: {name} has dtype {tensor.dtype} but {first_name} has {first.dtype}; cast one")
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {first_name} is on {first.device}")
    batches = {name: t.shape[0] for name, t in named.items() if t.dim() == 3}
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{name}: {size}" for name, size in batches.items())
        raise ValueError(f"{op}: batch sizes differ ({sizes})")
    for group in width_groups:
        widths = {name: named[name].shape[-1] for name in group}
        if len(set(widths.values())) > 1:
            sizes = ", ".join(f"{name}: {size}" for name, size in widths.items())
            raise ValueError(f"{op}: feature sizes (last dimension) differ ({sizes})")
        if next(iter(widths.values())) == 0:
            raise ValueError(f"{op}: {', '.join(group)} need at least one feature; got a last dimension of 0")
    return bool(batches), next(iter(batches.values()), 1)
