"""Seed derivation shared by the built-in plugins."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key, well mixed (numpy's ``SeedSequence``).

    Seeding from ``(seed, index)`` rather than from a running generator makes item ``index`` of
    a stream computable on its own: the same in any worker, after any resume.
    """
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers; got {keys}")
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))
