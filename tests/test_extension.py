"""Loading fewcore._C: on a machine without a GPU, and what happens when it cannot load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fewcore import _extension


def test_extension_loads_and_runs_on_cpu_with_no_gpu_visible() -> None:
    script = (
        "import torch, fewcore.ops as ops\n"
        "from fewcore import _extension\n"
        "assert not torch.cuda.is_available()\n"
        "assert _extension.load_error() is None, _extension.load_error()\n"
        "x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)\n"
        "torch.testing.assert_close(ops.pairwise_distance(x, y, 'sqeuclidean'), torch.cdist(x, y) ** 2, rtol=1e-4, atol=1e-4)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FEWCORE_OPS": "compiled"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_build_info_records_what_it_was_built_against() -> None:
    info = _extension.build_info()
    assert info["torch"] == torch.__version__
    assert isinstance(info["with_cuda"], bool)


def test_unloadable_extension_explains_versions_and_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    import fewcore.ops as ops

    failure = ImportError("undefined symbol: _ZN3c10fake")
    monkeypatch.setattr(_extension, "_load", lambda: failure)
    monkeypatch.setenv("FEWCORE_OPS", "compiled")
    with pytest.raises(_extension.ExtensionNotAvailable) as info:
        ops.pairwise_distance(torch.randn(3, 4), torch.randn(5, 4))
    message = str(info.value)
    assert "undefined symbol" in message
    assert f"It was built for torch {_extension.build_info()['torch']}" in message
    assert "pip install --no-build-isolation -e ." in message
    assert "FEWCORE_OPS=reference" in message
    assert info.value.__cause__ is failure


def test_reference_ops_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import fewcore.ops as ops

    monkeypatch.setattr(_extension, "_load", lambda: ImportError("broken build"))
    monkeypatch.setenv("FEWCORE_OPS", "reference")
    x, y = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(ops.pairwise_distance(x, y), torch.cdist(x, y) ** 2, rtol=1e-4, atol=1e-4)


def test_unknown_implementation_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWCORE_OPS", "fast")
    with pytest.raises(ValueError, match="FEWCORE_OPS must be one of compiled, reference; got 'fast'"):
        _extension.active_implementation()
