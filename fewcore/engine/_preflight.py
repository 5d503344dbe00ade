"""Checks of a whole run config against its data before the first training step.

A validation or test setting that the data cannot serve (say 20-way validation episodes on a
split of 6 classes) would otherwise fail only at the first validation, after checkpoints were
written. Building every sampler the run will need is cheap and asks each one to check its
episode shape against the dataset.
"""

from __future__ import annotations

from fewcore._types import FewShotDataset
from fewcore.config import Config, parse_setting
from fewcore.engine._build import BuildError, build_sampler


def check_episodes(config: Config, dataset: FewShotDataset) -> None:
    """Build the validation sampler (when validation is on) and one sampler per test setting.

    Raises:
        BuildError: a setting does not fit the dataset; the message names the config key, the
            split and what to change.
    """
    # (config key, setting, split, query items per class, batch size, seed, the other way out)
    phases = [
        ("eval.settings", setting, config.eval.split, config.eval.q_query, config.eval.batch_size, config.eval.seed,
         "or evaluate another split (eval.split)")
        for setting in config.eval.settings
    ]
    if config.val.every:
        phases.insert(0, ("val.setting", config.val.setting, "val", config.val.q_query, config.val.batch_size,
                          config.val.seed, "or turn validation off (val.every = 0)"))
    for key, setting, split, q_query, batch_size, seed, other in phases:
        n_way, k_shot = parse_setting(setting)
        try:
            build_sampler(config.sampler, dataset, split, n_way, k_shot, q_query, batch_size, seed)
        except BuildError as exc:
            raise BuildError(
                f"{key} {setting!r} does not fit the {split!r} split of the dataset, so the run would fail when it "
                f"gets there: {exc}. Choose fewer ways, shots or queries, give that split more classes, {other}"
            ) from None
