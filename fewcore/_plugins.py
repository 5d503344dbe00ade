"""Plugin discovery (pluggy + entry points) and the component registry built from it.

Every way a plugin can fail while fewcore loads it — its entry point does not import, pluggy
rejects its hook implementations (a misspelt hook, an unknown argument), a hook raises, returns
something, or calls ``register`` with a bad name or factory, or it registers a name another plugin
took — is a :class:`PluginLoadError` that names the entry point, its distribution and how to run
without it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import inspect
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy
from torch import nn

from fewcore import hookspecs
from fewcore._types import Backbone, EpisodeSampler, FewShotDataset, Learner

ENTRY_POINT_GROUP = "fewcore"
DISABLE_ENV = "FEWCORE_DISABLE_PLUGINS"
#: the distribution of the built-in components
BUILTIN_DISTRIBUTION = "fewcore"

#: component kind → the hook that registers it
KINDS: dict[str, str] = {
    "backbone": "fewcore_register_backbones",
    "sampler": "fewcore_register_samplers",
    "learner": "fewcore_register_learners",
    "dataset": "fewcore_register_datasets",
}

#: component kind → the base class a component of that kind subclasses
KIND_BASES: dict[str, type] = {
    "backbone": Backbone,
    "sampler": EpisodeSampler,
    "learner": Learner,
    "dataset": FewShotDataset,
}


class PluginLoadError(ImportError):
    """A plugin could not be loaded: its entry point failed to import, or its hooks or what they
    registered are invalid. The message names the entry point, its distribution and the switch
    that runs fewcore without it; the original exception, if any, is chained."""


class RegistryError(LookupError):
    """A component name is unknown, or registered twice."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from."""

    name: str
    distribution: str
    version: str

    @property
    def how_to_disable(self) -> str:
        """What a user does to run without this plugin."""
        if self.distribution == BUILTIN_DISTRIBUTION:
            return f"it is built into fewcore: reinstall fewcore (pip install --force-reinstall {BUILTIN_DISTRIBUTION})"
        return f"set {DISABLE_ENV}={self.name} to run without it"

    def describe(self) -> str:
        """``plugin "name" (distribution "dist")``, for messages."""
        return f'plugin "{self.name}" (distribution "{self.distribution}")'


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


def _same_name_advice(first: PluginInfo, second: PluginInfo) -> str:
    """How to resolve two entry points of one name: disabling by name would drop both."""
    third_party = [info for info in (first, second) if info.distribution != BUILTIN_DISTRIBUTION]
    uninstall = " or ".join(f"pip uninstall {info.distribution}" for info in third_party)
    return (
        f"{DISABLE_ENV}={first.name} would disable both; uninstall one ({uninstall}), or ask its author "
        "to rename the entry point"
    )


def get_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Build a plugin manager: hookspecs, then every enabled ``fewcore`` entry point.

    Entry points named in ``FEWCORE_DISABLE_PLUGINS`` (comma-separated) are not imported.

    Returns:
        The manager and, for each registered plugin name, where it came from.

    Raises:
        PluginLoadError: an entry point failed to import, pluggy rejected its hook
            implementations (e.g. a misspelt hook name), or two entry points share a name; the
            original exception is chained.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    infos: dict[str, PluginInfo] = {}
    for ep in _entry_points():
        if ep.name in disabled:
            continue
        info = PluginInfo(
            ep.name,
            ep.dist.name if ep.dist is not None else "<no distribution>",
            ep.dist.version if ep.dist is not None else "",
        )
        if ep.name in infos:
            raise PluginLoadError(
                f'two plugins are named "{ep.name}": one from distribution "{infos[ep.name].distribution}" '
                f'and one from "{info.distribution}" ({ep.value}); {_same_name_advice(infos[ep.name], info)}'
            )
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f'Error importing plugin "{ep.name}" ({ep.value}) from distribution "{info.distribution}": '
                f"{type(exc).__name__}: {exc}; {info.how_to_disable}"
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            # pluggy's message spans lines; the CLI reports errors as one paragraph.
            raise PluginLoadError(f"{info.describe()} has invalid hooks: {' '.join(str(exc).split())}; {info.how_to_disable}") from exc
        infos[ep.name] = info
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        info = infos.get(pm.get_name(exc.plugin) or "", PluginInfo(str(exc.plugin), "<unknown>", ""))
        raise PluginLoadError(f"{info.describe()}: {_explain_unknown_hooks(exc)}; {info.how_to_disable}") from exc
    return pm, infos


def _explain_unknown_hooks(error: pluggy.PluginValidationError) -> str:
    """pluggy's message for a hook without a specification, with the spelling it may have meant."""
    message = " ".join(str(error).split())
    for word in message.replace("'", " ").split():
        if word.startswith("fewcore_") and word not in KINDS.values():
            close = difflib.get_close_matches(word, KINDS.values(), n=1)
            if close:
                return f"{message}. Did you mean {close[0]!r}? The hooks are: {', '.join(KINDS.values())}"
    return f"{message}. The hooks are: {', '.join(KINDS.values())}"


def _check_factory(kind: str, name: Any, factory: Any) -> None:
    """A ``register(name, factory)`` call's arguments, or a ``ValueError`` saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register() takes the {kind}'s name as a non-empty str first; got {name!r} ({type(name).__name__})")
    if isinstance(factory, nn.Module) or not callable(factory):
        raise ValueError(
            f"register({name!r}, factory) needs a factory that builds the {kind} (its class, or a function); got "
            f"{type(factory).__name__} {factory!r:.80}"
        )
    base = KIND_BASES[kind]
    if inspect.isclass(factory) and not issubclass(factory, base):
        raise ValueError(
            f"{factory.__name__} is registered as a {kind} but does not subclass fewcore.{base.__name__}"
        )


class Registry:
    """Every component the enabled plugins register, by kind and name.

    Build one with :meth:`from_plugins` (or use :func:`fewcore.registry`); a registry never
    loads plugins at import time.
    """

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
        """Call every plugin's ``fewcore_register_*`` hooks with a ``register`` bound to it.

        Raises:
            PluginLoadError: a hook raised, returned a value, or registered a bad or taken name.
        """
        registry = cls()
        for kind, hook_name in KINDS.items():
            # Not pluggy's call loop (pm.hook.<name>(register=...)): it passes one set of arguments
            # to every implementation, and the registry must know which plugin registered which
            # name, so each implementation gets its own `register`. Wrappers, the one thing the
            # call loop adds here, are refused rather than silently not run.
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                info = infos.get(impl.plugin_name, PluginInfo(impl.plugin_name, "<not from an entry point>", ""))
                if impl.hookwrapper or impl.wrapper:
                    raise PluginLoadError(
                        f"{info.describe()} implements {hook_name} as a wrapper; registration hooks are called "
                        f"once per plugin, so wrappers are not supported: drop wrapper=True; {info.how_to_disable}"
                    )
                registry._call_hook(kind, hook_name, impl.function, info)
        return registry

    def _call_hook(self, kind: str, hook_name: str, hook: Callable[..., Any], info: PluginInfo) -> None:
        def register(name: str, factory: Callable[..., Any]) -> None:
            _check_factory(kind, name, factory)
            taken = self._components[kind].get(name)
            if taken is not None:
                raise PluginLoadError(self._duplicate_message(kind, name, taken.plugin, info))
            self._components[kind][name] = Component(kind, name, factory, info)

        try:
            returned = hook(register=register)
        except PluginLoadError:
            raise
        except Exception as exc:
            raise PluginLoadError(
                f"{info.describe()} failed in {hook_name}: {type(exc).__name__}: {exc}; {info.how_to_disable}"
            ) from exc
        if returned is not None:
            raise PluginLoadError(
                f"{info.describe()}: {hook_name} returned a {type(returned).__name__}; a hook registers each "
                f"component by calling register(name, factory) and returns None; {info.how_to_disable}"
            )

    @staticmethod
    def _duplicate_message(kind: str, name: str, first: PluginInfo, second: PluginInfo) -> str:
        third_party = [info for info in (first, second) if info.distribution != BUILTIN_DISTRIBUTION]
        if len(third_party) == 1:
            advice = (
                f"it is a built-in name: rename it in {third_party[0].describe()}, or run without that plugin "
                f"({DISABLE_ENV}={third_party[0].name})"
            )
        else:
            advice = f"rename one, or disable one plugin ({DISABLE_ENV}={first.name} or {DISABLE_ENV}={second.name})"
        return f"{kind} {name!r} is registered twice: first by {first.describe()}, then by {second.describe()}; {advice}"

    def add(self, component: Component) -> None:
        """Add one component; a name already taken in its kind is an error naming both plugins."""
        if component.kind not in KINDS:
            raise RegistryError(f"unknown component kind {component.kind!r}; expected one of {sorted(KINDS)}")
        taken = self._components[component.kind].get(component.name)
        if taken is not None:
            raise RegistryError(self._duplicate_message(component.kind, component.name, taken.plugin, component.plugin))
        self._components[component.kind][component.name] = component

    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered components of ``kind``."""
        return sorted(self._kind(kind))

    def components(self) -> list[Component]:
        """Every component, sorted by kind then name."""
        return [self._kind(kind)[name] for kind in KINDS for name in self.names(kind)]

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
#: the registry :func:`use_registry` made current, if any
_active: ContextVar[Registry | None] = ContextVar("fewcore_active_registry", default=None)


def registry(reload: bool = False) -> Registry:
    """The current registry: the one :func:`use_registry` set, else that of every enabled
    plugin's components, built on first use (``reload`` rebuilds it)."""
    global _default
    active = _active.get()
    if reload or (_default is None and active is None):
        _default = Registry.from_plugins(*get_plugin_manager())
    if active is not None:
        return active
    assert _default is not None  # built above
    return _default


@contextlib.contextmanager
def use_registry(components: Registry | None) -> Iterator[None]:
    """Make ``components`` the registry that :func:`create`, :func:`list_components` and the
    engine use inside this block (in this thread or task), e.g. a test's registry of fakes;
    ``None`` keeps the current one."""
    token = _active.set(components if components is not None else _active.get())
    try:
        yield
    finally:
        _active.reset(token)


def list_components(kind: str) -> list[str]:
    """Names of the registered components of ``kind`` (backbone, sampler, learner, dataset)."""
    return registry().names(kind)


def create(kind: str, name: str, **config: Any) -> Any:
    """Build a registered component: ``create("learner", "protonet", backbone=...)``."""
    return registry().create(kind, name, **config)
