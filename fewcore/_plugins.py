"""Plugin discovery (pluggy + entry points) and the component registry built from it."""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from fewcore import hookspecs

ENTRY_POINT_GROUP = "fewcore"
DISABLE_ENV = "FEWCORE_DISABLE_PLUGINS"

#: component kind → the hook that registers it
KINDS: dict[str, str] = {
    "backbone": "fewcore_register_backbones",
    "sampler": "fewcore_register_samplers",
    "learner": "fewcore_register_learners",
    "dataset": "fewcore_register_datasets",
}


class PluginLoadError(ImportError):
    """A plugin's entry point could not be imported or registered."""


class RegistryError(LookupError):
    """A component name is unknown, or registered twice."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Component:
    """One registered component and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: PluginInfo


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def get_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Build a plugin manager: hookspecs, then every enabled ``fewcore`` entry point.

    Entry points named in ``FEWCORE_DISABLE_PLUGINS`` (comma-separated) are not imported.

    Returns:
        The manager and, for each registered plugin name, where it came from.

    Raises:
        PluginLoadError: an entry point failed to import, or two entry points share a name;
            the original exception is chained.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    infos: dict[str, PluginInfo] = {}
    for ep in _entry_points():
        if ep.name in disabled:
            continue
        dist = ep.dist.name if ep.dist is not None else "<no distribution>"
        version = ep.dist.version if ep.dist is not None else ""
        how_to_disable = f"set {DISABLE_ENV}={ep.name} to run without it"
        if ep.name in infos:
            raise PluginLoadError(
                f'two plugins are named "{ep.name}": one from distribution "{infos[ep.name].distribution}" '
                f'and one from "{dist}" ({ep.value}); {how_to_disable}'
            )
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f'Error importing plugin "{ep.name}" ({ep.value}) from distribution "{dist}": '
                f"{type(exc).__name__}: {exc}; {how_to_disable}"
            ) from exc
        pm.register(plugin, name=ep.name)
        infos[ep.name] = PluginInfo(ep.name, dist, version)
    pm.check_pending()
    return pm, infos


class Registry:
    """Every component the enabled plugins register, by kind and name.

    Build one with :meth:`from_plugins` (or use :func:`fewcore.registry`); a registry never
    loads plugins at import time.
    """

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
        """Call every plugin's ``fewcore_register_*`` hooks with a ``register`` bound to it."""
        registry = cls()
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                info = infos.get(impl.plugin_name, PluginInfo(impl.plugin_name, "<not from an entry point>", ""))

                def register(name: str, factory: Callable[..., Any], _kind: str = kind, _info: PluginInfo = info) -> None:
                    registry.add(Component(_kind, name, factory, _info))

                impl.function(register=register)
        return registry

    def add(self, component: Component) -> None:
        """Add one component; a name already taken in its kind is an error naming both plugins."""
        if component.kind not in KINDS:
            raise RegistryError(f"unknown component kind {component.kind!r}; expected one of {sorted(KINDS)}")
        taken = self._components[component.kind].get(component.name)
        if taken is not None:
            raise RegistryError(
                f"{component.kind} {component.name!r} is registered twice: by plugin "
                f'"{taken.plugin.name}" ({taken.plugin.distribution}) and by plugin '
                f'"{component.plugin.name}" ({component.plugin.distribution}); '
                f"disable one with {DISABLE_ENV}"
            )
        self._components[component.kind][component.name] = component

    def list(self, kind: str) -> list[str]:
        """Sorted names of the registered components of ``kind``."""
        return sorted(self._kind(kind))

    def components(self) -> list[Component]:
        """Every component, sorted by kind then name."""
        return [self._kind(kind)[name] for kind in KINDS for name in self.list(kind)]

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; unknown names list what is available."""
        components = self._kind(kind)
        if name not in components:
            close = difflib.get_close_matches(name, components, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(
                f"unknown {kind} {name!r}; available: {', '.join(sorted(components)) or 'none'}.{hint}"
            )
        return components[name]

    def create(self, kind: str, name: str, **config: Any) -> Any:
        """Build the component ``name`` of ``kind`` with ``config`` as keyword arguments."""
        return self.get(kind, name).factory(**config)

    def _kind(self, kind: str) -> dict[str, Component]:
        if kind not in self._components:
            raise RegistryError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self._components[kind]


_default: Registry | None = None


def registry(reload: bool = False) -> Registry:
    """The registry of every enabled plugin's components, built on first use."""
    global _default
    if _default is None or reload:
        _default = Registry.from_plugins(*get_plugin_manager())
    return _default


def list_components(kind: str) -> list[str]:
    """Names of the registered components of ``kind`` (backbone, sampler, learner, dataset)."""
    return registry().list(kind)


def create(kind: str, name: str, **config: Any) -> Any:
    """Build a registered component: ``create("learner", "protonet", backbone=...)``."""
    return registry().create(kind, name, **config)
