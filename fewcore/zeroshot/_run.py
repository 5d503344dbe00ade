"""Fit a zero-shot model on the seen classes and measure it: the function behind ``fewcore zsl``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import fewcore
from fewcore.config import ConfigError, apply_overrides
from fewcore.zeroshot._compat import Compatibility
from fewcore.zeroshot._data import ZeroShotSplit, zero_shot_split
from fewcore.zeroshot._eszsl import ESZSL
from fewcore.zeroshot._metrics import ZeroShotReport, zero_shot_report
from fewcore.zeroshot._model import ZeroShotModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

#: model name → factory ``factory(item_shape=..., **options)``
MODELS: dict[str, Callable[..., ZeroShotModel]] = {"eszsl": ESZSL, "compat": Compatibility}

#: the keys of ``[protocol]`` and their defaults
PROTOCOL_DEFAULTS: dict[str, Any] = {"holdout": 0.2, "seed": 0, "resamples": 1000}


def evaluate_zero_shot(model: ZeroShotModel, split: ZeroShotSplit, resamples: int = 1000, seed: int = 0) -> ZeroShotReport:
    """Fit ``model`` on the seen classes of ``split``, then report ZSL and GZSL accuracy.

    ZSL ranks only the unseen classes for the unseen test items; GZSL ranks every class for the
    seen and the unseen test items (see :func:`fewcore.zeroshot.zero_shot_report`).
    """
    s = split.n_seen_classes
    model.fit(split.train_x, split.train_y, split.attributes[:s])
    with torch.no_grad():
        unseen_scores = model.scores(split.unseen_x, split.attributes)
        seen_scores = model.scores(split.seen_x, split.attributes)
    return zero_shot_report(
        zsl_predictions=unseen_scores[:, s:].argmax(dim=1) + s,
        unseen_labels=split.unseen_y,
        gzsl_seen_predictions=seen_scores.argmax(dim=1),
        seen_labels=split.seen_y,
        gzsl_unseen_predictions=unseen_scores.argmax(dim=1),
        resamples=resamples,
        seed=seed,
    )


def _table(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    return dict(table)


def load_zero_shot_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Read a zero-shot config: ``[dataset]`` and ``[model]`` (``name`` + options), ``[protocol]``.

    Raises:
        ConfigError: the file is missing or malformed, or names an unknown model or protocol key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    data = apply_overrides(data, overrides)
    unknown_sections = sorted(set(data) - {"dataset", "model", "protocol"})
    if unknown_sections:
        raise ConfigError(f"{path}: unknown sections {unknown_sections}; a zero-shot config has [dataset], [model], [protocol]")
    config = {section: _table(data, section, str(path)) for section in ("dataset", "model", "protocol")}
    for section in ("dataset", "model"):
        if not isinstance(config[section].get("name"), str):
            raise ConfigError(f"{path}: [{section}] needs a name")
    if config["model"]["name"] not in MODELS:
        raise ConfigError(f"{path}: unknown zero-shot model {config['model']['name']!r}; known: {', '.join(MODELS)}")
    unknown = sorted(set(config["protocol"]) - set(PROTOCOL_DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown [protocol] keys {unknown}; valid: {', '.join(PROTOCOL_DEFAULTS)}")
    config["protocol"] = {**PROTOCOL_DEFAULTS, **config["protocol"]}
    return config


def run_zero_shot(config: dict[str, dict[str, Any]]) -> ZeroShotReport:
    """Build the dataset and model of a loaded config, fit on the seen classes, and report."""
    dataset_options = {k: v for k, v in config["dataset"].items() if k != "name"}
    model_options = {k: v for k, v in config["model"].items() if k != "name"}
    protocol = config["protocol"]
    try:
        dataset = fewcore.create("dataset", config["dataset"]["name"], **dataset_options)
        split = zero_shot_split(dataset, holdout=protocol["holdout"], seed=protocol["seed"])
        model = MODELS[config["model"]["name"]](item_shape=tuple(split.train_x.shape[1:]), **model_options)
    except (TypeError, ValueError, KeyError, ImportError) as exc:
        # a bad option, malformed data files, or a reader's missing dependency: all fixable by the user
        raise ConfigError(f"could not build the zero-shot run: {exc}") from exc
    return evaluate_zero_shot(model, split, resamples=protocol["resamples"], seed=protocol["seed"])
