"""Inputs and tolerances shared by the op tests."""

from __future__ import annotations

import pytest
import torch

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: how an input tensor is laid out in memory (the kernels must not care)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """assert_close tolerances against the float64 reference, for values of order 1-10."""
    return {
        torch.float64: {"rtol": 1e-9, "atol": 1e-9},
        torch.float32: {"rtol": 1e-4, "atol": 1e-4},
        torch.float16: {"rtol": 1e-2, "atol": 2e-2},
        torch.bfloat16: {"rtol": 2e-2, "atol": 1e-1},
    }[dtype]


#: the CPU, and CUDA when a GPU is present (tests marked ``cuda`` skip without one)
DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


def make(
    shape: tuple[int, ...], layout: str, dtype: torch.dtype, generator: torch.Generator, device: str = "cpu"
) -> torch.Tensor:
    """A random ``shape`` tensor on ``device`` with the given memory layout."""
    *lead, rows, cols = shape

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    if layout == "contiguous":
        result = randn(*shape)
    elif layout == "transposed":
        result = randn(*lead, cols, rows).transpose(-1, -2)
    elif layout == "sliced":
        result = randn(*lead, rows, 2 * cols)[..., ::2]
    elif layout == "expanded":
        # a stride-0 leading dimension: tasks sharing one tensor, or rows repeating one row
        result = randn(1, *shape[1:]).expand(shape)
    else:
        raise AssertionError(layout)
    assert result.shape == shape and (layout == "contiguous") == result.is_contiguous()
    return result


def leaf(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t as a leaf requiring grad in its layout, float64 copy requiring grad)``."""
    return t.detach().requires_grad_(), t.detach().double().requires_grad_()
