"""Checkpoints: atomic writes, safe loads, and the RNG states that make a resume exact.

A checkpoint is a dict of tensors and plain Python data (ints, floats, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)``: loading never unpickles arbitrary objects.
The config travels as the plain dict of :meth:`fewcore.config.Config.to_dict`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

#: bumped when the layout of a checkpoint changes incompatibly
FORMAT = 1
#: what every checkpoint of a training run holds (``best.pt`` and ``last.pt``)
MODEL_KEYS = ("config", "item_shape", "model", "step")
#: what a resumable checkpoint (``last.pt``) holds besides
RESUME_KEYS = (*MODEL_KEYS, "best", "optimizer", "scheduler", "ranks", "world_size", "elapsed_s")


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


def load_checkpoint(path: str | Path, require: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without unpickling arbitrary objects.

    Args:
        path: the checkpoint file.
        require: keys the payload must hold, e.g. :data:`MODEL_KEYS` to rebuild a model.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is cut short or corrupt, holds pickled objects, is not a
            fewcore checkpoint of a supported format, or lacks a required key. The message never
            suggests ``weights_only=False``: fewcore does not unpickle code from a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # torch.save writes a zip archive whose directory is at the end, so a file cut short
    # (an interrupted copy or download, a full disk) is recognised before torch reads it.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a complete checkpoint ({path.stat().st_size} bytes, not the zip archive that torch.save "
            "writes): it was cut short after it was written, or is another kind of file. fewcore writes checkpoints "
            "atomically, so use the run's other checkpoint (checkpoints/last.pt or best.pt) or train again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        named = f" (such as {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects{named}, which a fewcore checkpoint never contains; fewcore loads "
            "only tensors and plain data and will not run code from a file. Use a checkpoint written by fewcore train"
        ) from None  # torch's message advises weights_only=False, which fewcore must never suggest
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise CheckpointError(
            f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            "use the run's other checkpoint (checkpoints/last.pt or best.pt) or train again"
        ) from None
    if not isinstance(payload, dict) or "fewcore_checkpoint" not in payload:
        raise CheckpointError(f"{path} is not a fewcore checkpoint (no 'fewcore_checkpoint' format marker)")
    if payload["fewcore_checkpoint"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['fewcore_checkpoint']}; this fewcore reads format {FORMAT}"
        )
    missing = [key for key in require if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path} is a fewcore checkpoint without {', '.join(map(repr, missing))}, which every checkpoint of "
            "fewcore train holds; it was written by other code. Use checkpoints/best.pt or last.pt of a training run"
        )
    return payload


def load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, remedy: str) -> None:
    """Load ``state`` (a checkpoint's ``model``) into ``module``, all keys and shapes matching.

    Args:
        module: the model rebuilt from the checkpoint's config.
        state: its saved state dict.
        path: the checkpoint, named in the error.
        remedy: what the user can do when the weights do not fit, for the error message.

    Raises:
        CheckpointError: the weights are of another architecture (missing, unexpected or
            differently shaped tensors); the message lists the first differences.
    """
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        shown = "; ".join(lines[:3]) + ("; ..." if len(lines) > 3 else "")
        raise CheckpointError(
            f"{path} holds weights of another architecture than its config builds now ({shown}); {remedy}"
        ) from None


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
