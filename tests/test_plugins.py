"""Plugin discovery, the registry and their errors, with faked entry points."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

import fewcore
from fewcore import _plugins
from fewcore._plugins import Component, PluginInfo, PluginLoadError, Registry, RegistryError


@dataclass
class FakeDist:
    name: str
    version: str = "1.0"


@dataclass
class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    name: str
    value: str
    dist: FakeDist | None

    def load(self) -> Any:
        module_name, _, attr = self.value.partition(":")
        module = __import__(module_name, fromlist=["_"])
        return getattr(module, attr) if attr else module


def _plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, fewcore.hookimpl(function))
    return module


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch):
    """Install fake plugin modules and make them the only entry points."""

    def install(*plugins: tuple[str, str, types.ModuleType | None]) -> None:
        entry_points = []
        for ep_name, dist_name, module in plugins:
            module_name = f"fake_fewcore_plugin_{ep_name}"
            if module is not None:
                monkeypatch.setitem(sys.modules, module_name, module)
            entry_points.append(FakeEntryPoint(ep_name, module_name, FakeDist(dist_name)))
        monkeypatch.setattr(_plugins, "_entry_points", lambda: entry_points)

    return install


class Widget:
    def __init__(self, size: int = 1) -> None:
        self.size = size


def _registers(kind_hook: str, *names: str) -> dict[str, Any]:
    def hook(register):
        for name in names:
            register(name, Widget)

    return {kind_hook: hook}


def test_discovers_components_through_entry_points(fake_plugins) -> None:
    fake_plugins(
        ("alpha", "alpha-dist", _plugin_module("a", **_registers("fewcore_register_learners", "l1", "l2"))),
        ("beta", "beta-dist", _plugin_module("b", **_registers("fewcore_register_backbones", "b1"))),
    )
    registry = Registry.from_plugins(*_plugins.get_plugin_manager())
    assert registry.list("learner") == ["l1", "l2"]
    assert registry.list("backbone") == ["b1"]
    assert registry.list("dataset") == []
    component = registry.get("backbone", "b1")
    assert component.plugin == PluginInfo("beta", "beta-dist", "1.0")
    widget = registry.create("learner", "l2", size=3)
    assert isinstance(widget, Widget) and widget.size == 3


def test_broken_plugin_names_entry_point_and_distribution(fake_plugins, monkeypatch) -> None:
    fake_plugins(("broken", "broken-dist", None))
    monkeypatch.setitem(sys.modules, "fake_fewcore_plugin_broken", None)  # import raises ImportError
    with pytest.raises(PluginLoadError) as info:
        _plugins.get_plugin_manager()
    message = str(info.value)
    assert '"broken"' in message and '"broken-dist"' in message
    assert "FEWCORE_DISABLE_PLUGINS=broken" in message
    assert isinstance(info.value.__cause__, ImportError)


def test_disabled_plugin_is_not_imported(fake_plugins, monkeypatch) -> None:
    fake_plugins(
        ("broken", "broken-dist", None),
        ("good", "good-dist", _plugin_module("g", **_registers("fewcore_register_datasets", "d1"))),
    )
    monkeypatch.setitem(sys.modules, "fake_fewcore_plugin_broken", None)
    monkeypatch.setenv("FEWCORE_DISABLE_PLUGINS", " broken , other")
    registry = Registry.from_plugins(*_plugins.get_plugin_manager())
    assert registry.list("dataset") == ["d1"]


def test_duplicate_component_name_names_both_plugins(fake_plugins) -> None:
    fake_plugins(
        ("first", "first-dist", _plugin_module("f", **_registers("fewcore_register_samplers", "same"))),
        ("second", "second-dist", _plugin_module("s", **_registers("fewcore_register_samplers", "same"))),
    )
    with pytest.raises(RegistryError) as info:
        Registry.from_plugins(*_plugins.get_plugin_manager())
    message = str(info.value)
    assert "'same'" in message and '"first"' in message and '"second"' in message
    assert "first-dist" in message and "second-dist" in message


def test_duplicate_entry_point_name_is_an_error(fake_plugins) -> None:
    fake_plugins(
        ("twin", "one-dist", _plugin_module("t1")),
        ("twin", "two-dist", _plugin_module("t2")),
    )
    with pytest.raises(PluginLoadError, match='two plugins are named "twin".*one-dist.*two-dist'):
        _plugins.get_plugin_manager()


def test_unknown_hook_is_rejected(fake_plugins) -> None:
    """check_pending(): a misspelt hook name must not be silently ignored."""
    fake_plugins(("typo", "typo-dist", _plugin_module("x", fewcore_register_lerners=lambda register: None)))
    with pytest.raises(Exception, match="fewcore_register_lerners"):
        _plugins.get_plugin_manager()


def test_unknown_name_lists_available_and_suggests() -> None:
    registry = Registry()
    info = PluginInfo("p", "p-dist", "1")
    for name in ("protonet", "matchingnet"):
        registry.add(Component("learner", name, Widget, info))
    with pytest.raises(RegistryError, match=r"unknown learner 'protonett'; available: matchingnet, protonet\. Did you mean 'protonet'\?"):
        registry.create("learner", "protonett")
    with pytest.raises(RegistryError, match="unknown component kind 'learners'"):
        registry.list("learners")


def test_builtins_are_registered_through_entry_points() -> None:
    registry = fewcore.registry(reload=True)
    builtins = {c.plugin.name for c in registry.components() if c.plugin.distribution == "fewcore"}
    assert builtins, "no built-in component was registered through the fewcore entry-point group"
    assert builtins <= {"fewcore.backbones", "fewcore.samplers", "fewcore.learners", "fewcore.datasets"}
