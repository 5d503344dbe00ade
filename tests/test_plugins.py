"""Plugin discovery, the registry and their errors, with faked entry points."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pluggy
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
    """What the fake plugins' factories build."""

    def __init__(self, size: int = 1) -> None:
        self.size = size


def widget(size: int = 1) -> Widget:
    """A factory function: the registry cannot check a function's product when it is registered."""
    return Widget(size)


def _registers(kind_hook: str, *names: str) -> dict[str, Any]:
    def hook(register):
        for name in names:
            register(name, widget)

    return {kind_hook: hook}


def test_discovers_components_through_entry_points(fake_plugins) -> None:
    fake_plugins(
        ("alpha", "alpha-dist", _plugin_module("a", **_registers("fewcore_register_learners", "l1", "l2"))),
        ("beta", "beta-dist", _plugin_module("b", **_registers("fewcore_register_backbones", "b1"))),
    )
    registry = Registry.from_plugins(*_plugins.get_plugin_manager())
    assert registry.names("learner") == ["l1", "l2"]
    assert registry.names("backbone") == ["b1"]
    assert registry.names("dataset") == []
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
    assert registry.names("dataset") == ["d1"]


def test_duplicate_component_name_names_both_plugins(fake_plugins) -> None:
    fake_plugins(
        ("first", "first-dist", _plugin_module("f", **_registers("fewcore_register_samplers", "same"))),
        ("second", "second-dist", _plugin_module("s", **_registers("fewcore_register_samplers", "same"))),
    )
    with pytest.raises(PluginLoadError) as info:
        Registry.from_plugins(*_plugins.get_plugin_manager())
    message = str(info.value)
    assert 'first by plugin "first" (distribution "first-dist"), then by plugin "second" (distribution "second-dist")' in message
    assert "FEWCORE_DISABLE_PLUGINS=first or FEWCORE_DISABLE_PLUGINS=second" in message


def test_a_third_party_reusing_a_built_in_name_is_told_to_rename_without_disabling_the_built_ins(fake_plugins) -> None:
    from fewcore.plugins import backbones

    fake_plugins(
        ("fewcore.backbones", "fewcore", backbones),
        ("mine", "my-dist", _plugin_module("m", **_registers("fewcore_register_backbones", "conv4"))),
    )
    with pytest.raises(PluginLoadError) as info:
        Registry.from_plugins(*_plugins.get_plugin_manager())
    message = str(info.value)
    assert "backbone 'conv4' is registered twice: first by plugin \"fewcore.backbones\" (distribution \"fewcore\")" in message
    assert 'it is a built-in name: rename it in plugin "mine" (distribution "my-dist")' in message
    assert "FEWCORE_DISABLE_PLUGINS=mine" in message and "FEWCORE_DISABLE_PLUGINS=fewcore" not in message


def test_duplicate_entry_point_name_is_an_error(fake_plugins) -> None:
    fake_plugins(
        ("twin", "one-dist", _plugin_module("t1")),
        ("twin", "two-dist", _plugin_module("t2")),
    )
    with pytest.raises(PluginLoadError, match='two plugins are named "twin".*one-dist.*two-dist') as info:
        _plugins.get_plugin_manager()
    # Disabling by name would drop both (a third party naming its entry point "fewcore.learners"
    # would take the built-ins with it): the advice is to uninstall one.
    advice = "FEWCORE_DISABLE_PLUGINS=twin would disable both; uninstall one (pip uninstall one-dist or pip uninstall two-dist)"
    assert advice in str(info.value)


def test_a_third_party_entry_point_named_like_the_built_ins_is_not_answered_with_disabling_them(fake_plugins) -> None:
    from fewcore.plugins import learners

    fake_plugins(("fewcore.learners", "fewcore", learners), ("fewcore.learners", "squatter-dist", _plugin_module("q")))
    with pytest.raises(PluginLoadError) as info:
        _plugins.get_plugin_manager()
    assert "uninstall one (pip uninstall squatter-dist)" in str(info.value)


def test_unknown_hook_is_rejected(fake_plugins) -> None:
    """check_pending(): a misspelt hook name must not be silently ignored."""
    fake_plugins(("typo", "typo-dist", _plugin_module("x", fewcore_register_lerners=lambda register: None)))
    with pytest.raises(PluginLoadError) as info:
        _plugins.get_plugin_manager()
    message = str(info.value)
    assert message.startswith('plugin "typo" (distribution "typo-dist"): ')
    assert "fewcore_register_lerners" in message and "Did you mean 'fewcore_register_learners'?" in message
    assert "FEWCORE_DISABLE_PLUGINS=typo" in message
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)


def test_a_hook_with_an_unknown_argument_is_a_load_error(fake_plugins) -> None:
    fake_plugins(("args", "args-dist", _plugin_module("x", fewcore_register_learners=lambda register, extra: None)))
    with pytest.raises(PluginLoadError, match=r'plugin "args" \(distribution "args-dist"\) has invalid hooks: .*extra') as info:
        _plugins.get_plugin_manager()
    assert "FEWCORE_DISABLE_PLUGINS=args" in str(info.value)


def _load_error(fake_plugins, hook: Any) -> str:
    fake_plugins(("bad", "bad-dist", _plugin_module("x", fewcore_register_learners=hook)))
    with pytest.raises(PluginLoadError) as info:
        Registry.from_plugins(*_plugins.get_plugin_manager())
    message = str(info.value)
    assert message.startswith('plugin "bad" (distribution "bad-dist")') and message.endswith(
        "set FEWCORE_DISABLE_PLUGINS=bad to run without it"
    ), message
    return message


def test_a_non_string_name_is_a_load_error(fake_plugins) -> None:
    message = _load_error(fake_plugins, lambda register: register(1, widget))
    assert "register() takes the learner's name as a non-empty str first; got 1 (int)" in message


def test_a_factory_that_builds_nothing_or_the_wrong_kind_is_a_load_error(fake_plugins) -> None:
    from fewcore.plugins.backbones import Conv4

    message = _load_error(fake_plugins, lambda register: register("net", Conv4(hidden_channels=2)))
    assert "needs a factory that builds the learner (its class, or a function); got Conv4" in message
    message = _load_error(fake_plugins, lambda register: register("net", Conv4))
    assert "Conv4 is registered as a learner but does not subclass fewcore.Learner" in message
    message = _load_error(fake_plugins, lambda register: register("net", "Conv4"))
    assert "got str 'Conv4'" in message


def test_a_hook_that_raises_or_returns_components_is_a_load_error(fake_plugins) -> None:
    def raises(register: Any) -> None:
        raise KeyError("oops")

    message = _load_error(fake_plugins, raises)
    assert "failed in fewcore_register_learners: KeyError: 'oops'" in message
    message = _load_error(fake_plugins, lambda register: [widget])
    assert "fewcore_register_learners returned a list; a hook registers each component by calling register(name, factory)" in message


def test_a_wrapper_hook_is_refused_instead_of_silently_not_run(fake_plugins) -> None:
    def wrapper(register: Any) -> Any:
        return (yield)

    module = types.ModuleType("w")
    module.fewcore_register_learners = fewcore.hookimpl(wrapper=True)(wrapper)  # type: ignore[attr-defined]
    fake_plugins(("wrap", "wrap-dist", module))
    expected = r'plugin "wrap" \(distribution "wrap-dist"\) implements fewcore_register_learners as a wrapper'
    with pytest.raises(PluginLoadError, match=expected):
        Registry.from_plugins(*_plugins.get_plugin_manager())


def test_use_registry_makes_a_registry_current_without_touching_private_state() -> None:
    own = Registry()
    own.add(Component("learner", "only", widget, PluginInfo("t", "t-dist", "1")))
    with fewcore.use_registry(own):
        assert fewcore.list_components("learner") == ["only"]
        assert fewcore.create("learner", "only", size=2).size == 2
    assert "only" not in fewcore.list_components("learner")


def test_unknown_name_lists_available_and_suggests() -> None:
    registry = Registry()
    info = PluginInfo("p", "p-dist", "1")
    for name in ("protonet", "matchingnet"):
        registry.add(Component("learner", name, Widget, info))
    with pytest.raises(RegistryError, match=r"unknown learner 'protonett'; available: matchingnet, protonet\. Did you mean 'protonet'\?"):
        registry.create("learner", "protonett")
    with pytest.raises(RegistryError, match="unknown component kind 'learners'"):
        registry.names("learners")


def test_builtins_are_registered_through_entry_points() -> None:
    registry = fewcore.registry(reload=True)
    builtins = {c.plugin.name for c in registry.components() if c.plugin.distribution == "fewcore"}
    assert builtins, "no built-in component was registered through the fewcore entry-point group"
    assert builtins <= {"fewcore.backbones", "fewcore.samplers", "fewcore.learners", "fewcore.datasets"}
