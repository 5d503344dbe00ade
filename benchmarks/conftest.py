"""Benchmark options: ``-m large`` selects the large-shape kernel benchmarks (slow on 2 cores)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "large: kernel benchmarks at large shapes (minutes on 2 cores)")
