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


def check_batch(op: str, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], widths: int) -> tuple[bool, int]:
    """Validate rank, dtype, device and batch size of an op's tensor arguments.

    Runs on every call, so the passing path only compares attributes; messages are built on
    failure.

    Args:
        op: the op's name, for messages.
        names: the arguments' names, for messages.
        tensors: the arguments, each ``[B, rows, width]`` or ``[rows, width]``.
        widths: how many leading arguments must share their last dimension (e.g. 2 for x, y).

    Returns:
        ``(batched, B)``: whether any argument is 3-D (the result then is too) and the batch size
        (1 when none is batched).
    """
    first = tensors[0]
    batch = -1
    for name, tensor in zip(names, tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(tensor).__name__}")
        rank = tensor.dim()
        if rank not in (2, 3):
            raise ValueError(
                f"{op}: {name} must be [B, rows, features] or [rows, features]; got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype not in _FLOATING:
            raise TypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64; got {tensor.dtype}")
        if tensor.dtype != first.dtype:
            raise TypeError(f"{op}: {name} has dtype {tensor.dtype} but {names[0]} has {first.dtype}; cast one")
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {names[0]} is on {first.device}")
        if rank == 3:
            if batch >= 0 and tensor.shape[0] != batch:
                sizes = ", ".join(f"{n}: {t.shape[0]}" for n, t in zip(names, tensors) if t.dim() == 3)
                raise ValueError(f"{op}: batch sizes differ ({sizes})")
            batch = tensor.shape[0]
    width = first.shape[-1]
    if any(t.shape[-1] != width for t in tensors[1:widths]):
        sizes = ", ".join(f"{n}: {t.shape[-1]}" for n, t in zip(names[:widths], tensors[:widths]))
        raise ValueError(f"{op}: feature sizes (last dimension) differ ({sizes})")
    if width == 0:
        raise ValueError(f"{op}: {', '.join(names[:widths])} need at least one feature; got a last dimension of 0")
    return batch >= 0, max(batch, 1)
