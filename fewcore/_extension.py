"""The one place that loads the compiled core ``fewcore._C`` and decides which ops are active.

``FEWCORE_OPS=compiled`` (default) uses the kernels in ``fewcore._C``; if they cannot be
loaded, using an op raises :class:`ExtensionNotAvailable` with the load error, the versions the
extension was built for and how to rebuild. ``FEWCORE_OPS=reference`` uses the pure-PyTorch
reference implementations instead — only ever because the user asked.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch

OPS_ENV = "FEWCORE_OPS"
_IMPLEMENTATIONS = ("compiled", "reference")
_REBUILD = "rebuild with: pip install --no-build-isolation -e .  (or `make install`)"


class ExtensionNotAvailable(RuntimeError):
    """``fewcore._C`` could not be loaded and the reference ops were not requested."""


def build_info() -> dict[str, Any]:
    """What ``fewcore._C`` was built against (written by setup.py), or {} if unknown."""
    path = Path(__file__).with_name("_build_info.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@functools.cache
def _load() -> BaseException | None:
    """Import ``fewcore._C`` once; return the error instead of raising it."""
    try:
        from fewcore import _C  # noqa: F401  (importing registers the ops with the dispatcher)
    except BaseException as exc:  # an ABI mismatch can surface as any error type
        return exc
    return None


def load_error() -> BaseException | None:
    """The exception raised while loading ``fewcore._C``, or None when it loaded."""
    return _load()


def active_implementation() -> str:
    """``"compiled"`` or ``"reference"``, from ``FEWCORE_OPS`` (default compiled)."""
    choice = os.environ.get(OPS_ENV, "compiled").strip().lower() or "compiled"
    if choice not in _IMPLEMENTATIONS:
        raise ValueError(f"{OPS_ENV} must be one of {', '.join(_IMPLEMENTATIONS)}; got {choice!r}")
    return choice


def require_compiled() -> None:
    """Raise a helpful error if the compiled ops are requested but cannot be loaded."""
    error = _load()
    if error is None:
        return
    info = build_info()
    built_for = (
        f"torch {info.get('torch', '?')}, CUDA {info.get('torch_cuda') or 'none'}" if info else "unknown versions"
    )
    raise ExtensionNotAvailable(
        f"fewcore's compiled ops (fewcore._C) could not be loaded: {type(error).__name__}: {error}. "
        f"It was built for {built_for}; this process runs torch {torch.__version__}, "
        f"CUDA {torch.version.cuda or 'none'}. {_REBUILD}; "
        f"or set {OPS_ENV}=reference to use the (slower) pure-PyTorch reference ops."
    ) from error


def cuda_kernels_compiled() -> bool:
    """Whether the loaded extension carries CUDA kernels."""
    return bool(build_info().get("with_cuda")) and _load() is None
