"""fewcore: few-shot learning for PyTorch, with fused compiled kernels and a plugin ecosystem."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fewcore._plugins import (
    Component,
    PluginInfo,
    PluginLoadError,
    Registry,
    RegistryError,
    create,
    list_components,
    registry,
    use_registry,
)
from fewcore._types import Backbone, Episode, EpisodeSampler, FewShotDataset, Learner, LearnerOutput
from fewcore.engine import load
from fewcore.hookspecs import hookimpl

try:
    __version__ = version("fewcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Backbone",
    "Component",
    "Episode",
    "EpisodeSampler",
    "FewShotDataset",
    "Learner",
    "LearnerOutput",
    "PluginInfo",
    "PluginLoadError",
    "Registry",
    "RegistryError",
    "create",
    "hookimpl",
    "list_components",
    "load",
    "registry",
    "use_registry",
]
