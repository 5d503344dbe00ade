"""Where fewcore looks for the data files a config names.

A relative data path (e.g. ``root = "omniglot/images_background_small1.zip"``) is looked up, in
order:

1. under the data folder given by ``fewcore --data-dir DIR`` or, without it, the
   ``FEWCORE_DATA`` environment variable;
2. relative to the folder of the config file being run (``fewcore train configs/x.toml``), or to
   the working directory when there is no config file (the Python API, ``fewcore eval``).

The first that exists is used; when none does, the error lists every place tried. An absolute
path is used as given. Dataset plugins call :func:`resolve_data_path` on their path options so
that these rules hold for every dataset.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

__all__ = ["DATA_ENV", "data_location", "resolve_data_path"]

#: the environment variable naming the folder that relative data paths are looked up in first
DATA_ENV = "FEWCORE_DATA"

_data_dir: ContextVar[Path | None] = ContextVar("fewcore_data_dir", default=None)
_config_dir: ContextVar[Path | None] = ContextVar("fewcore_config_dir", default=None)


@contextlib.contextmanager
def data_location(data_dir: str | os.PathLike[str] | None = None, config_dir: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Inside this block, resolve relative data paths under ``data_dir`` and ``config_dir``.

    Args:
        data_dir: the data folder (the CLI's ``--data-dir``); takes the place of ``FEWCORE_DATA``.
        config_dir: the folder of the config file being run.
    """
    data_token = _data_dir.set(Path(data_dir).expanduser() if data_dir is not None else None)
    config_token = _config_dir.set(Path(config_dir) if config_dir is not None else None)
    try:
        yield
    finally:
        _config_dir.reset(config_token)
        _data_dir.reset(data_token)


def _candidates(path: Path) -> list[tuple[Path, str]]:
    """Where ``path`` may be, each with the rule that put it there, in lookup order."""
    if path.is_absolute():
        return [(path, "an absolute path")]
    candidates = []
    data_dir = _data_dir.get()
    if data_dir is not None:
        candidates.append((data_dir / path, "under --data-dir"))
    elif os.environ.get(DATA_ENV):
        candidates.append((Path(os.environ[DATA_ENV]).expanduser() / path, f"under {DATA_ENV}"))
    config_dir = _config_dir.get()
    if config_dir is not None:
        candidates.append((config_dir / path, "relative to the config file's folder"))
    else:
        candidates.append((Path.cwd() / path, "relative to the working directory"))
    return candidates


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """The data file or folder ``path`` names, found by the rules of this module.

    Args:
        path: absolute, or relative to the data folder or the config file (see the module notes).

    Returns:
        The first existing candidate (a symbolic link counts, so that its reader can say where
        a broken one points).

    Raises:
        FileNotFoundError: no candidate exists; the message lists each path tried and why.
    """
    candidates = _candidates(Path(path).expanduser())
    for candidate, _ in candidates:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    tried = "; ".join(f"{candidate} ({why})" for candidate, why in candidates)
    hint = ""
    if _data_dir.get() is None and not os.environ.get(DATA_ENV) and not Path(path).expanduser().is_absolute():
        hint = f"; set {DATA_ENV} (or pass fewcore --data-dir) to the folder that holds it"
    raise FileNotFoundError(f"data path {path} not found: tried {tried}{hint}")
