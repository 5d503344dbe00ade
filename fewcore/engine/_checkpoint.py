"""Checkpoints: atomic writes, safe loads, and the RNG states that make a resume exact.

A checkpoint is a dict of tensors and plain Python data (ints, floats, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)``: loading never unpickles arbitrary objects.
The config travels as the plain dict of :meth:`fewcore.config.Config.to_dict`.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

#: bumped when the layout of a checkpoint changes incompatibly
FORMAT = 1


class CheckpointError(ValueError):
    """A file is not a fewcore checkpoint, or is one of an unsupported format."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file
    is then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"fewcore_checkpoint": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is not a fewcore checkpoint of a supported format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for foreign files
        raise CheckpointError(f"{path} is not a loadable fewcore checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or "fewcore_checkpoint" not in payload:
        raise CheckpointError(f"{path} is not a fewcore checkpoint (no 'fewcore_checkpoint' format marker)")
    if payload["fewcore_checkpoint"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['fewcore_checkpoint']}; this fewcore reads format {FORMAT}"
        )
    return payload


def rng_state() -> dict[str, Any]:
    """Every global RNG state (torch CPU and CUDA, numpy, python) as checkpoint-safe data."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. a validation) without changing any global RNG state seen after it."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
