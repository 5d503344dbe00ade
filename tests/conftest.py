"""Shared fixtures; markers are declared in pyproject.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the shared Omniglot subsets (DESIGN.md); FEWCORE_OMNIGLOT overrides the location
OMNIGLOT_DIR = Path(os.environ.get("FEWCORE_OMNIGLOT", REPO_ROOT.parent / "shared" / "data" / "omniglot"))


@pytest.fixture
def omniglot_dir() -> Path:
    """The folder holding images_background_small{1,2}.zip; skips the test when absent."""
    if not (OMNIGLOT_DIR / "images_background_small1.zip").exists():
        pytest.skip(f"Omniglot subsets not found in {OMNIGLOT_DIR} (set FEWCORE_OMNIGLOT to their folder)")
    return OMNIGLOT_DIR


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
