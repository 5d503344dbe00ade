"""Components from a config, through the registry only: dataset, backbone + learner, samplers, optimizer."""

from __future__ import annotations

from typing import Any

import torch

import fewcore
from fewcore._types import EpisodeSampler, FewShotDataset, Learner
from fewcore.config import ComponentConfig, Config, ConfigError, TrainConfig


class BuildError(ValueError):
    """A component named in a config could not be built with the options it was given."""


def _create(kind: str, section: str, component: ComponentConfig, **extra: Any) -> Any:
    given_twice = sorted(set(extra) & set(component.options))
    if given_twice:
        raise BuildError(
            f"[{section}] {', '.join(given_twice)} is set by fewcore (from the dataset and the run), "
            f"not by the config: remove {', '.join(f'{section}.{key}' for key in given_twice)}"
        )
    try:
        return fewcore.create(kind, component.name, **extra, **component.options)
    except fewcore.RegistryError as exc:
        raise BuildError(f"[{section}] {exc}") from exc
    except (TypeError, ValueError, FileNotFoundError) as exc:
        # A factory rejected an option or a value, a dataset's files are missing, or a sampler's
        # dataset cannot make such episodes: name the section so the user knows which keys to fix.
        options = ", ".join(sorted(component.options)) or "none"
        raise BuildError(
            f"[{section}] could not build {kind} {component.name!r} with options ({options}): {exc}"
        ) from exc


def build_dataset(config: Config) -> FewShotDataset:
    """The dataset of ``[dataset]``."""
    return _create("dataset", "dataset", config.dataset)


def build_learner(config: Config, item_shape: tuple[int, ...] | None = None) -> Learner:
    """The backbone of ``[backbone]`` inside the learner of ``[learner]``.

    Args:
        config: the run config.
        item_shape: the dataset's item shape, passed to the backbone and learner factories as
            ``item_shape`` (so no config repeats it); the backbone is checked to accept it, so a
            mismatch is reported before training starts.
    """
    if item_shape is None:
        backbone = _create("backbone", "backbone", config.backbone)
        return _create("learner", "learner", config.learner, backbone=backbone)
    shape = tuple(item_shape)
    backbone = _create("backbone", "backbone", config.backbone, item_shape=shape)
    try:
        backbone.embedding_size(shape)
    except ValueError as exc:
        raise BuildError(f"[backbone] {config.backbone.name!r} does not fit the dataset's items: {exc}") from exc
    return _create("learner", "learner", config.learner, backbone=backbone, item_shape=shape)


def build_sampler(
    sampler: ComponentConfig,
    dataset: FewShotDataset,
    split: str,
    n_way: int,
    k_shot: int,
    q_query: int,
    batch_size: int,
    seed: int,
) -> EpisodeSampler:
    """The sampler ``sampler`` (a ``[sampler]`` section) over ``split`` with the given episode shape and seed."""
    return _create(
        "sampler",
        "sampler",
        sampler,
        dataset=dataset,
        split=split,
        n_way=n_way,
        k_shot=k_shot,
        q_query=q_query,
        batch_size=batch_size,
        seed=seed,
    )


def build_optimizer(train: TrainConfig, parameters: Any) -> torch.optim.Optimizer:
    """The optimizer named by ``train.optimizer``."""
    parameters = list(parameters)
    if not parameters:
        raise ConfigError(
            "the learner has no trainable parameters, so there is nothing to train: a frozen backbone "
            "(e.g. backbone.freeze = true) under a learner without weights of its own (protonet, matching) "
            "leaves none; unfreeze the backbone or pick a learner with trainable parts"
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    raise ConfigError(f"train.optimizer must be adam, adamw or sgd; got {train.optimizer!r}")


def build_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule named by ``train.scheduler`` (``"none"`` keeps it constant)."""
    if train.scheduler == "none":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if train.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.step_size, gamma=train.gamma)
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.steps, eta_min=train.min_lr)
    raise ConfigError(f"train.scheduler must be none, step or cosine; got {train.scheduler!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BuildError(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return device
