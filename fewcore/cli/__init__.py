"""The ``fewcore`` command line (the ``fewcore`` console script runs :func:`main`).

``_main`` holds the parser, the entry point and the error contract; ``_inspect`` the commands
that inspect the installation (plugins, info, check); ``_engine`` those that run the engine
(train, eval, plot, predict, demo).
"""

from __future__ import annotations

from fewcore.cli._inspect import info
from fewcore.cli._main import build_parser, main

__all__ = ["build_parser", "info", "main"]
