"""Evaluation: mean accuracy ± 95% confidence interval over many episodes, per way/shot setting."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from fewcore._plugins import Registry, use_registry
from fewcore._types import EpisodeSampler, FewShotDataset, Learner
from fewcore.config import ComponentConfig, parse_setting
from fewcore.engine._build import build_sampler
from fewcore.engine._checkpoint import preserved_rng
from fewcore.engine._metrics import episode_accuracy, mean_ci95
from fewcore.engine._precision import ComputeMode


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one way/shot setting.

    Attributes:
        n_way: classes per episode.
        k_shot: support items per class.
        episodes: episodes evaluated (n of the confidence interval).
        accuracy: mean per-episode accuracy, in [0, 1].
        ci95: 95% confidence half-width, ``1.96 · σ / √n``.
        loss: mean loss over the episodes.
    """

    n_way: int
    k_shot: int
    episodes: int
    accuracy: float
    ci95: float
    loss: float

    @property
    def setting(self) -> str:
        """E.g. ``"5-way 1-shot"``."""
        return f"{self.n_way}-way {self.k_shot}-shot"

    def __str__(self) -> str:
        return f"{self.setting}: {100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.episodes} episodes)"


def run_episodes(
    learner: Learner,
    sampler: EpisodeSampler,
    episodes: int,
    device: torch.device | str,
    desc: str | None = None,
    *,
    compute: ComputeMode | None = None,
) -> EvalResult:
    """Accuracy of ``learner`` (in eval mode, without gradients) on the first ``episodes`` episodes.

    The learner's train/eval mode and every global RNG state are as before afterwards, so an
    evaluation in the middle of training does not change the training that follows. Learners
    that adapt at test time (MAML-like) must enable gradients for their inner loop themselves
    (``torch.enable_grad()``), since this runs under ``torch.no_grad()``.

    Args:
        learner: the model.
        sampler: yields batches of B episodes; batches are drawn until ``episodes`` episodes
            are seen, and the first ``episodes`` counted.
        episodes: n of the confidence interval.
        device: where to run.
        desc: a progress-bar label; no bar when None.
        compute: the autocast of the forward passes (the learner's memory format is the
            caller's to set, with :meth:`ComputeMode.prepare`); float32 when None.
    """
    was_training = learner.training
    accuracies: list[float] = []
    losses: list[float] = []
    shape: tuple[int, int] | None = None
    autocast = compute.autocast if compute is not None else contextlib.nullcontext
    learner.eval()
    try:
        with preserved_rng(), torch.no_grad(), tqdm(total=episodes, desc=desc, unit="ep", disable=desc is None, leave=False) as bar:
            for episode in sampler:
                shape = (episode.n_way, episode.k_shot)
                episode = episode.to(device)
                with autocast():
                    output = learner(episode)
                accuracies += episode_accuracy(output.logits, episode.query_y).tolist()
                losses.append(float(output.loss))
                bar.update(min(episode.batch_size, episodes - bar.n))
                if len(accuracies) >= episodes:
                    break
    finally:
        learner.train(was_training)
    if shape is None or len(accuracies) < episodes:
        raise RuntimeError(f"the sampler ended after {len(accuracies)} episodes; {episodes} were needed")
    mean, ci95 = mean_ci95(accuracies[:episodes])
    return EvalResult(shape[0], shape[1], episodes, mean, ci95, sum(losses) / len(losses))


def evaluate(
    learner: Learner,
    dataset: FewShotDataset,
    settings: Sequence[str] = ("5-way 1-shot", "5-way 5-shot"),
    *,
    episodes: int = 600,
    q_query: int = 15,
    batch_size: int = 1,
    split: str = "test",
    seed: int = 2,
    sampler: ComponentConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "auto",
    channels_last: bool | str = "auto",
    registry: Registry | None = None,
) -> list[EvalResult]:
    """Mean accuracy ± 95% CI of ``learner`` on ``split`` classes of ``dataset``, per setting.

    Args:
        learner: the model (e.g. from :func:`fewcore.load`); moved to nothing, so it must be on
            ``device`` already.
        dataset: the dataset whose ``split`` classes are tested.
        settings: way/shot settings such as ``"5-way 1-shot"``.
        episodes: episodes per setting (≥ 600 is the literature's standard).
        q_query: query items per class.
        batch_size: episodes per forward pass.
        split: the class split.
        seed: seed of the test episodes (the same seed gives the same episodes).
        sampler: the sampler component; the built-in ``episodic`` one by default.
        device: where the episodes are moved.
        progress: show a progress bar per setting.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"`` (the measured
            default of ``device``, see :mod:`fewcore.engine._precision`).
        channels_last: channels-last convolutions (True/False) or ``"auto"``; the learner's
            parameters are converted in place (their values do not change).
        registry: build the sampler from this registry instead of the installed plugins' (e.g.
            a test's fakes; see :func:`fewcore.use_registry`).

    Returns:
        One :class:`EvalResult` per setting, in order.
    """
    sampler = sampler or ComponentConfig("episodic")
    compute = ComputeMode.resolve(precision, channels_last, device)
    compute.prepare(learner)
    results = []
    for text in settings:
        n_way, k_shot = parse_setting(text)
        with use_registry(registry):
            episode_sampler = build_sampler(sampler, dataset, split, n_way, k_shot, q_query, batch_size, seed)
        desc = f"eval {n_way}-way {k_shot}-shot" if progress else None
        results.append(run_episodes(learner, episode_sampler, episodes, device, desc, compute=compute))
    return results
