"""The run directory's lock: one training at a time writes to a run directory.

Two trainings in one directory would overwrite each other's checkpoints and interleave their
metrics. ``run_lock`` holds an exclusive ``flock`` on ``RUN/.lock`` for the whole training; the
operating system releases it when the process ends, however it ends (SIGKILL included), so a
killed run never leaves a stale lock behind and ``--resume`` can start at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

#: the lock file inside a run directory (it records who holds it, for the error message)
LOCK_FILE = ".lock"


class RunDirError(RuntimeError):
    """A run directory cannot be written: it is a file, cannot be created, or another training holds it."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory (created if needed) for one training.

    Raises:
        RunDirError: ``run_dir`` is a file or cannot be created, or another process holds it.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"the run directory {run_dir} is a file; choose a directory for the run (--run-dir or run.dir)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(
            f"cannot create the run directory {run_dir}: {exc.strerror}; choose another one (--run-dir or run.dir)"
        ) from None
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"the run directory {run_dir} is in use by another training ({holder}); wait for it to end, "
                "or choose another run directory (--run-dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete everything in a run directory held with :func:`run_lock` except the lock itself
    (deleting the lock file would let a second training lock a new one)."""
    for entry in Path(run_dir).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
