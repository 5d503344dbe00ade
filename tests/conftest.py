"""Shared fixtures; markers are declared in pyproject.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

from fewcore.paths import DATA_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def omniglot_dir() -> Path:
    """``omniglot/`` of the data folder ``FEWCORE_DATA`` (as the Omniglot configs lay data out),
    holding images_background_small{1,2}.zip; skips the test when it is absent."""
    data = os.environ.get(DATA_ENV)
    if not data:
        pytest.skip(f"{DATA_ENV} is not set: set it to the folder that holds omniglot/images_background_small1.zip")
    folder = Path(data).resolve() / "omniglot"
    if not (folder / "images_background_small1.zip").exists():
        pytest.skip(f"Omniglot subsets not found in {folder} ({DATA_ENV}={data})")
    return folder


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one intra-op thread.

    For tiny models a second thread only adds synchronisation, and on a busy 2-core machine a
    descheduled thread stalls every op (measured: a 2 s test took 60 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
