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


# A broken build is simulated in a fresh process by making `import fewcore._C` fail.
_BROKEN_BUILD = "import sys; sys.modules['fewcore._C'] = None\nimport torch, fewcore.ops as ops\n"


def _run_with_broken_build(script: str, ops_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEWCORE_OPS": ops_env}
    return subprocess.run([sys.executable, "-c", _BROKEN_BUILD + script], capture_output=True, text=True, env=env)


def test_unloadable_extension_explains_versions_and_rebuild() -> None:
    result = _run_with_broken_build(
        "from fewcore._extension import ExtensionNotAvailable\n"
        "try:\n"
        "    ops.pairwise_distance(torch.randn(3, 4), torch.randn(5, 4))\n"
        "except ExtensionNotAvailable as exc:\n"
        "    assert isinstance(exc.__cause__, ImportError), exc.__cause__\n"
        "    print(exc)\n",
        ops_env="compiled",
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "fewcore._C" in message and "could not be loaded" in message
    assert f"It was built for torch {_extension.build_info()['torch']}" in message
    assert "pip install --no-build-isolation -e ." in message
    assert "FEWCORE_OPS=reference" in message


def test_reference_ops_only_when_asked() -> None:
    result = _run_with_broken_build(
        "x, y = torch.randn(3, 4), torch.randn(5, 4)\n"
        "torch.testing.assert_close(ops.pairwise_distance(x, y), torch.cdist(x, y) ** 2, rtol=1e-4, atol=1e-4)\n"
        "from fewcore import cli; cli.main(['info'])\n",
        ops_env="reference",
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert ["ops", "reference"] in lines
    assert ["extension_loaded", "False"] in lines


def test_unknown_implementation_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWCORE_OPS", "fast")
    with pytest.raises(ValueError, match="FEWCORE_OPS must be one of compiled, reference; got 'fast'"):
        _extension.active_implementation()
