"""``fewcore check``: every compiled op, forward and backward, against the reference on every device."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from fewcore.ops import _reference
from fewcore.ops._reference import METRICS

#: (name, B, N, M, D, C): an episode-sized problem, one spanning several CPU tiles, one whose
#: attention scores reach |score| = LARGE_SCORE with a spread of about 10 per query (queries and
#: support in two distant clusters), and near-duplicate points far from the origin (where
#: ‖x‖² + ‖y‖² − 2x·y and the gradients' expanded forms cancel)
SHAPES = (
    ("episode", 3, 7, 5, 33, 4),
    ("tiled", 1, 70, 600, 9, 3),
    ("large scores", 2, 9, 40, 17, 3),
    ("near duplicates", 2, 30, 20, 16, 3),
)
#: largest error allowed, relative to the largest reference magnitude (at least 1). Attention's
#: bound grows to 64·eps·max|score| where that is larger: rounding a score s moves exp(s) by
#: eps·|s| (at LARGE_SCORE: 1.4e-9 in float64, 0.76 in float32, whose scores are that coarse)
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
#: the largest attention score of the "large scores" problem
LARGE_SCORE = 1e5
_EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One op × metric × device × dtype × shape comparison.

    Attributes:
        op: ``pairwise_distance`` or ``episode_attention``.
        metric: one of :data:`fewcore.ops.METRICS`.
        device: where the compiled op ran (``cpu``, ``cuda:0``, ...).
        dtype: ``float32`` or ``float64``.
        shape: the name of the problem in :data:`SHAPES`.
        forward_error: largest relative error of the result (NaN if it did not run).
        backward_error: largest relative error over the input gradients (NaN if it did not run).
        tolerance: the bound both errors must stay under.
        error: the exception raised, if any.
    """

    op: str
    metric: str
    device: str
    dtype: str
    shape: str
    forward_error: float
    backward_error: float
    tolerance: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.forward_error <= self.tolerance and self.backward_error <= self.tolerance


def available_devices() -> list[str]:
    """``cpu`` and every visible CUDA device."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def _relative_error(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    worst = 0.0
    for a, e in zip(actual, expected):
        a = a.detach().double().cpu()
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        difference = (a - e).abs().max().item() if e.numel() else 0.0
        worst = max(worst, difference / scale if difference == difference else float("inf"))
    return worst


def _compare(
    compiled: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
    device: str, dtype: torch.dtype,
) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(1)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in inputs]
    out = compiled(*leaves)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, grad_out.to(device=device, dtype=dtype))
    reference_leaves = [t.detach().requires_grad_() for t in inputs]
    expected = reference(*reference_leaves)
    expected_grads = torch.autograd.grad(expected, reference_leaves, grad_out)
    return _relative_error([out], [expected]), _relative_error(grads, expected_grads)


def check_ops(devices: Sequence[str] | None = None, seed: int = 0) -> list[CheckResult]:
    """Compare the compiled ops with the float64 reference, forward and backward.

    Args:
        devices: where to run the compiled ops; default :func:`available_devices`.
        seed: seeds the random inputs.

    Returns:
        One :class:`CheckResult` per op × metric × device × dtype × shape.

    Raises:
        fewcore.ExtensionNotAvailable: the compiled ops could not be loaded.
    """
    from fewcore.ops import _compiled  # raises ExtensionNotAvailable when fewcore._C did not load

    results = []
    for device in devices or available_devices():
        for shape, b, n, m, d, c in SHAPES:
            generator = torch.Generator().manual_seed(seed)
            q, s = (torch.randn(b, rows, d, generator=generator, dtype=torch.float64) for rows in (n, m))
            v = torch.randn(b, m, c, generator=generator, dtype=torch.float64)
            if shape == "near duplicates":
                rows = torch.randint(0, n, (m,), generator=generator)
                q = q + 100.0
                s = q[:, rows] + 1e-3 * torch.randn(b, m, d, generator=generator, dtype=torch.float64)
            elif shape == "large scores":
                direction = torch.randn(1, 1, d, generator=generator, dtype=torch.float64)
                q, s = q + 1e4 * direction, s - 1e4 * direction
            # float32 inputs: the reference sees the same rounded values as the kernels
            q, s, v = (t.float().double() for t in (q, s, v))
            for code, metric in enumerate(METRICS):
                temperature = float(d) if metric in ("sqeuclidean", "dot") else 0.5
                similarity = _reference.similarity(q, s, metric)
                if shape == "large scores":
                    temperature = similarity.abs().max().item() / LARGE_SCORE
                max_score = similarity.abs().max().item() / temperature
                cases: list[tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], list[torch.Tensor]]] = [
                    (
                        "pairwise_distance",
                        lambda x, y, code=code, b=b: _compiled.pairwise_distance(x, y, code, True, b),
                        lambda x, y, metric=metric: _reference.pairwise_distance(x, y, metric),
                        [q, s],
                    ),
                    (
                        "episode_attention",
                        lambda x, y, z, code=code, t=temperature, b=b: _compiled.episode_attention(x, y, z, code, t, True, b),
                        lambda x, y, z, metric=metric, t=temperature: _reference.episode_attention(x, y, z, metric, t),
                        [q, s, v],
                    ),
                ]
                for dtype, base_tolerance in TOLERANCE.items():
                    for op, compiled, reference, inputs in cases:
                        tolerance = base_tolerance
                        if op == "episode_attention":
                            tolerance = max(base_tolerance, 64 * _EPS[dtype] * max_score)
                        fields: dict[str, Any] = {
                            "op": op, "metric": metric, "device": device, "dtype": str(dtype).removeprefix("torch."),
                            "shape": shape, "tolerance": tolerance,
                        }
                        try:
                            forward, backward = _compare(compiled, reference, inputs, device, dtype)
                        except Exception as exc:  # a failing kernel is a result to report, not a crash
                            results.append(CheckResult(**fields, forward_error=float("nan"),
                                                       backward_error=float("nan"), error=f"{type(exc).__name__}: {exc}"))
                            continue
                        results.append(CheckResult(**fields, forward_error=forward, backward_error=backward))
    return results
