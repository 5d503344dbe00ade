"""Run configuration: a TOML file → typed dataclasses, with ``section.key=value`` overrides.

A config has four component sections, each naming a registered component and passing every
other key to its factory, and four sections of engine settings whose keys are checked::

    [dataset]               # create("dataset", name, **rest)
    name = "glyphs"
    [sampler]               # create("sampler", name, dataset=..., split=..., n_way=..., ..., **rest)
    name = "episodic"
    [backbone]              # create("backbone", name, **rest)
    name = "conv4"
    [learner]               # create("learner", name, backbone=<the backbone>, **rest)
    name = "protonet"
    [train]                 # TrainConfig
    [val]                   # ValConfig
    [eval]                  # EvalConfig
    [run]                   # RunConfig

Overrides use the same dotted names: ``--set train.lr=0.001 --set learner.metric="cosine"``;
the value is read as a TOML value when it parses as one, and as a plain string otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key, or has a value of the wrong type."""


#: the values of ``train.precision`` and ``eval.precision``
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_SETTING = re.compile(r"^\s*(\d+)\s*-?\s*way\s*[,;]?\s*(\d+)\s*-?\s*shot\s*$", re.IGNORECASE)


def parse_setting(text: str) -> tuple[int, int]:
    """``"5-way 1-shot"`` → ``(5, 1)``; also accepts ``"5way 1shot"`` and ``"5-way, 1-shot"``.

    Raises:
        ConfigError: ``text`` is not of that form or a number is below 1.
    """
    match = _SETTING.match(text)
    if match is None:
        raise ConfigError(f"cannot read the way/shot setting {text!r}; expected e.g. \"5-way 1-shot\"")
    n_way, k_shot = int(match.group(1)), int(match.group(2))
    if n_way < 1 or k_shot < 1:
        raise ConfigError(f"way/shot setting {text!r} must have at least 1 way and 1 shot")
    return n_way, k_shot


@dataclass
class ComponentConfig:
    """A registered component and the keyword arguments of its factory.

    Attributes:
        name: the registered name (``fewcore plugins`` lists them).
        options: every other key of the section, passed to the factory unchanged.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Meta-training.

    Attributes:
        steps: optimizer updates; each one sees a meta-batch of ``batch_size`` episodes.
        n_way: classes per training episode (training often uses more ways than testing).
        k_shot: support items per class.
        q_query: query items per class.
        batch_size: episodes per meta-batch (B).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty (decoupled for AdamW).
        scheduler: ``"none"``, ``"step"`` (multiply by ``gamma`` every ``step_size`` steps) or
            ``"cosine"`` (cosine annealing to ``min_lr`` over ``steps``).
        step_size: period of the ``"step"`` schedule, in steps.
        gamma: factor of the ``"step"`` schedule.
        min_lr: final learning rate of the ``"cosine"`` schedule.
        grad_clip: clip the gradient norm to this value; 0 disables clipping.
        seed: seeds the model initialisation, the training episodes and every global RNG.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        log_every: steps between two lines of training metrics (averaged over those steps).
        checkpoint_every: steps between two resumable checkpoints (``last.pt``).
        sampler_options: options for the training sampler only, on top of ``[sampler]``'s
            (which every phase uses) — e.g. ``{augment = true}``: validation and test episodes
            are never augmented.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the forward under ``torch.autocast`` to
            that dtype; float16 with a gradient scaler), or ``"auto"``: the fastest measured on
            the device (bfloat16 on CPUs with native bfloat16, float32 elsewhere). Validation
            runs with the training precision and memory format.
        channels_last: channels-last convolution weights and activations (true/false), or
            ``"auto"``: channels-last on the CPU, where it was measured faster.
    """

    steps: int = 1000
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 15
    batch_size: int = 1
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"
    step_size: int = 1000
    gamma: float = 0.5
    min_lr: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 100
    sampler_options: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    channels_last: bool | str = "auto"


@dataclass
class ValConfig:
    """Periodic validation on the held-out ``"val"`` classes; the best step is kept as ``best.pt``.

    The same ``episodes`` episodes (from ``seed``) are used at every validation, so that two
    validations compare the model and not the luck of the draw.

    Attributes:
        every: steps between validations; 0 disables validation (``best.pt`` is then the last step).
        episodes: validation episodes.
        setting: way/shot of the validation episodes, e.g. ``"5-way 1-shot"``.
        q_query: query items per class.
        batch_size: episodes per forward pass.
        seed: seed of the validation episodes.
    """

    every: int = 100
    episodes: int = 100
    setting: str = "5-way 1-shot"
    q_query: int = 15
    batch_size: int = 1
    seed: int = 1


@dataclass
class EvalConfig:
    """Final evaluation on the ``split`` classes: mean accuracy ± 95% CI per way/shot setting.

    Attributes:
        episodes: test episodes per setting (the literature uses at least 600).
        settings: way/shot settings, e.g. ``["5-way 1-shot", "5-way 5-shot", "20-way 1-shot"]``.
        q_query: query items per class.
        batch_size: episodes per forward pass.
        split: the class split to evaluate on.
        seed: seed of the test episodes.
        precision: as ``train.precision``, for ``fewcore eval`` and ``fewcore predict``.
        channels_last: as ``train.channels_last``, for ``fewcore eval`` and ``fewcore predict``.
    """

    episodes: int = 600
    settings: list[str] = field(default_factory=lambda: ["5-way 1-shot", "5-way 5-shot"])
    q_query: int = 15
    batch_size: int = 1
    split: str = "test"
    seed: int = 2
    precision: str = "auto"
    channels_last: bool | str = "auto"


@dataclass
class RunConfig:
    """Where a run writes.

    Attributes:
        dir: the run directory (config, metrics, checkpoints, plots).
    """

    dir: str = "runs/default"


_COMPONENTS = ("dataset", "sampler", "backbone", "learner")
_DEFAULT_COMPONENT_NAMES = {"sampler": "episodic"}


@dataclass
class Config:
    """A whole run: which components, how to train, validate and evaluate, and where to write."""

    dataset: ComponentConfig
    backbone: ComponentConfig
    learner: ComponentConfig
    sampler: ComponentConfig = field(default_factory=lambda: ComponentConfig("episodic"))
    train: TrainConfig = field(default_factory=TrainConfig)
    val: ValConfig = field(default_factory=ValConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain TOML/JSON-compatible data (component options flattened back)."""
        data: dict[str, Any] = {}
        for name in _COMPONENTS:
            component: ComponentConfig = getattr(self, name)
            data[name] = {"name": component.name, **component.options}
        for name in _SECTIONS:
            data[name] = dataclasses.asdict(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Config:
        """Build and check a config from TOML-shaped data.

        Args:
            data: ``{section: {key: value}}``.
            source: where ``data`` came from, for error messages.

        Raises:
            ConfigError: an unknown section or key, a missing component name, a value of the
                wrong type, or an invalid value.
        """
        valid_sections = [*_COMPONENTS, *_SECTIONS]
        for section in data:
            if section not in valid_sections:
                raise ConfigError(_unknown(f"section [{section}]", section, valid_sections, source))
        kwargs: dict[str, Any] = {}
        for name in _COMPONENTS:
            kwargs[name] = _component(name, data.get(name), source)
        for name, section_type in _SECTIONS.items():
            kwargs[name] = _section(name, section_type, data.get(name, {}), source)
        config = cls(**kwargs)
        _check_values(config, source)
        return config


_SECTIONS: dict[str, type] = {"train": TrainConfig, "val": ValConfig, "eval": EvalConfig, "run": RunConfig}


def _unknown(what: str, name: str, valid: Iterable[str], source: str) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{source}: unknown {what}; valid: {', '.join(valid)}.{hint}"


def _component(section: str, raw: Any, source: str) -> ComponentConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [{section}] must be a table, got {type(raw).__name__}")
    options = dict(raw)
    name = options.pop("name", _DEFAULT_COMPONENT_NAMES.get(section))
    if name is None:
        raise ConfigError(f'{source}: [{section}] needs a name, e.g. {section}.name = "..." (`fewcore plugins` lists them)')
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {section}.name must be a string, got {name!r}")
    return ComponentConfig(name, options)


def _section(section: str, section_type: type, raw: Any, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [{section}] must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(section_type)
    valid = [f.name for f in dataclasses.fields(section_type)]
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(_unknown(f"key {section}.{key}", key, valid, source))
        values[key] = _coerce(f"{section}.{key}", hints[key], value, source)
    return section_type(**values)


def _coerce(key: str, expected: Any, value: Any, source: str) -> Any:
    """``value`` as ``expected`` (int, float, str, bool, a union of those, list[str] or a table); ints
    are accepted as floats."""
    if isinstance(expected, types.UnionType):
        shown = " or ".join(t.__name__ for t in typing.get_args(expected))
        if not any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in typing.get_args(expected)):
            raise ConfigError(f"{source}: {key} must be {shown}, got {value!r} ({type(value).__name__})")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        ok = False
    elif typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        ok = isinstance(value, list) and all(isinstance(v, item_type) for v in value)
    elif typing.get_origin(expected) is dict:
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, expected)
    if not ok:
        shown = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"{source}: {key} must be {shown}, got {value!r} ({type(value).__name__})")
    return value


def _check_values(config: Config, source: str) -> None:
    positive = {
        "train.steps": config.train.steps,
        "train.n_way": config.train.n_way,
        "train.k_shot": config.train.k_shot,
        "train.q_query": config.train.q_query,
        "train.batch_size": config.train.batch_size,
        "train.log_every": config.train.log_every,
        "train.checkpoint_every": config.train.checkpoint_every,
        "train.step_size": config.train.step_size,
        "val.episodes": config.val.episodes,
        "val.q_query": config.val.q_query,
        "val.batch_size": config.val.batch_size,
        "eval.episodes": config.eval.episodes,
        "eval.q_query": config.eval.q_query,
        "eval.batch_size": config.eval.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key} must be at least 1, got {value}")
    for name in _SECTIONS:
        section = getattr(config, name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{source}: {name}.{item.name} must be a finite number, got {value}")
    if config.val.every < 0:
        raise ConfigError(f"{source}: val.every must be 0 (off) or positive, got {config.val.every}")
    if config.train.lr <= 0:
        raise ConfigError(f"{source}: train.lr must be positive, got {config.train.lr}")
    choices = {
        "train.optimizer": (config.train.optimizer, ("adam", "adamw", "sgd")),
        "train.scheduler": (config.train.scheduler, ("none", "step", "cosine")),
        "train.precision": (config.train.precision, PRECISIONS),
        "eval.precision": (config.eval.precision, PRECISIONS),
    }
    for key, (choice, allowed) in choices.items():
        if choice not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}; got {choice!r}")
    layouts = {"train.channels_last": config.train.channels_last, "eval.channels_last": config.eval.channels_last}
    for key, layout in layouts.items():
        if layout not in (True, False, "auto"):
            raise ConfigError(f"{source}: {key} must be true, false or \"auto\"; got {layout!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.train.device):
        raise ConfigError(f"{source}: train.device must be auto, cpu, cuda or cuda:N; got {config.train.device!r}")
    if not config.eval.settings:
        raise ConfigError(f"{source}: eval.settings must name at least one setting, e.g. [\"5-way 1-shot\"]")
    for text in [config.val.setting, *config.eval.settings]:
        try:
            parse_setting(text)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.001"`` → ``(["train", "lr"], 0.001)``.

    The value is read as a TOML value (numbers, booleans, quoted strings, arrays, inline
    tables); anything that does not parse as one is taken as a plain string, so
    ``learner.metric=cosine`` works without quotes.

    Raises:
        ConfigError: no ``=``, or the key is not dotted ``section.key``.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=0.001")
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: the key must be section.key, e.g. train.lr")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of TOML-shaped ``data`` with each ``section.key=value`` override set."""
    result = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a table")
            node = child
        node[path[-1]] = value
    return result


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read a TOML config and apply ``section.key=value`` overrides.

    When the file sets no ``run.dir``, the run directory is ``runs/<file stem>``.

    Raises:
        ConfigError: the file is missing or not valid TOML, or the config is invalid (the
            message names the bad key and lists the valid ones).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8 whatever the locale
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        found = sorted(path.glob("*.toml"))
        hint = f", e.g. {found[0]}" if found else ""
        raise ConfigError(f"config path {path} is a directory; give a TOML file{hint}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "TOML configs must be UTF-8: save the file with UTF-8 encoding"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    data.setdefault("run", {}).setdefault("dir", f"runs/{path.stem}")
    overrides = list(overrides)
    source = f"{path}" + (" (with overrides)" if overrides else "")
    return Config.from_dict(apply_overrides(data, overrides), source=source)
