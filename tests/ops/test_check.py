"""``fewcore check`` and :func:`fewcore.ops.check_ops`."""

from __future__ import annotations

import json

import pytest
import torch

from fewcore import cli
from fewcore.ops import METRICS, _reference, check_ops
from fewcore.ops._check import SHAPES


def test_check_ops_passes_on_cpu() -> None:
    results = check_ops(["cpu"])
    assert len(results) == 2 * len(METRICS) * 2 * len(SHAPES)  # ops × metrics × dtypes × shapes
    assert {"large scores", "near duplicates"} <= {r.shape for r in results}
    failures = [r for r in results if not r.passed]
    assert not failures, failures
    assert all(r.forward_error <= r.tolerance and r.backward_error <= r.tolerance for r in results)
    # float64 stays strict at |score| = 1e5: only the scores' own rounding loosens the bound
    large = [r for r in results if r.shape == "large scores" and r.dtype == "float64"]
    assert large and all(r.tolerance < 2e-9 for r in large)


def test_cli_prints_a_table_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["op", "metric", "device"]
    total = 2 * len(METRICS) * 2 * len(SHAPES)
    assert "FAIL" not in out and f"{total}/{total} passed" in out


def test_cli_reports_a_wrong_kernel_and_exits_nonzero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the kernels disagreed with the reference, check must say so: shift the reference."""
    original = _reference.pairwise_distance

    def shifted(x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean") -> torch.Tensor:
        return original(x, y, metric) + (1.0 if metric == "dot" else 0.0)

    monkeypatch.setattr(_reference, "pairwise_distance", shifted)
    assert cli.main(["check", "--device", "cpu", "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    failed = {(r["op"], r["metric"]) for r in records if not r["passed"]}
    assert ("pairwise_distance", "dot") in failed
    assert ("pairwise_distance", "cosine") not in failed


@pytest.mark.cuda
def test_check_ops_passes_on_cuda() -> None:
    results = check_ops([f"cuda:{i}" for i in range(torch.cuda.device_count())])
    failures = [r for r in results if not r.passed]
    assert results and not failures, failures
